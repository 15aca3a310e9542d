"""What an agent said about itself: Claude Code's JSON result, Codex's JSONL events, or any JSON.

- Claude Code (``claude -p ... --output-format json``) prints one object with ``type: "result"``:
  ``subtype``, ``is_error``, ``result``, ``num_turns``, ``total_cost_usd`` and ``usage`` (Anthropic's
  counting: ``input_tokens`` excludes ``cache_read_input_tokens`` and
  ``cache_creation_input_tokens``). fanflow's ``Usage.input_tokens`` includes both; ``cached_tokens``
  is the cache reads; the cost is ``total_cost_usd``; calls are ``num_turns``.
- Codex (``codex exec --json``) prints JSONL events; each ``turn.completed`` carries ``usage``
  (OpenAI's counting: ``input_tokens`` includes ``cached_input_tokens``), summed over the run and
  priced from fanflow's table as ``openai:<model>`` when the command names its model (else $0).
  ``turn.failed`` and ``error`` events make the run an error.
- Anything else: the last stdout line that is a JSON object or array (or all of stdout, when it
  parses as JSON) becomes the result; usage is not known.
"""

from __future__ import annotations

import json
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any

from fanflow.executors.llm.pricing import cost_usd
from fanflow.result import Usage

__all__ = ["CLAUDE_MODEL", "CODEX_MODEL", "AgentReport", "OutputScanner", "parse_agent_output"]

#: ``Execution.model`` of a Claude Code run (its usage is recorded under this id).
CLAUDE_MODEL = "anthropic:claude-code"
#: ``Execution.model`` of a Codex run.
CODEX_MODEL = "openai:codex"

_CODEX_EVENTS = frozenset({
    "thread.started", "turn.started", "turn.completed", "turn.failed", "item.started", "item.updated",
    "item.completed", "error",
})  # fmt: skip
_ERROR_TEXT_LIMIT = 2000


@dataclass(frozen=True, slots=True)
class AgentReport:
    """What an agent's stdout says.

    Attributes:
        kind: ``claude``, ``codex``, or None for anything else.
        result: Claude's result object; for Codex a summary (``thread_id``, ``result``: the last
            agent message, ``usage``, ``num_turns``, ``is_error``, ``errors``); else the last JSON
            printed; None when there was none.
        usage: what the agent reports it spent (zero when unknown).
        model: ``anthropic:claude-code`` / ``openai:codex`` / None.
        is_error: the agent says it failed (Claude's ``is_error`` or an ``error_*`` subtype; a
            failed Codex turn or an error event).
        subtype: Claude's ``subtype`` (``success``, ``error_max_turns`` ...).
        error: the agent's own words about its failure, bounded.
    """

    kind: str | None = None
    result: Any = None
    usage: Usage = field(default_factory=Usage)
    model: str | None = None
    is_error: bool = False
    subtype: str | None = None
    error: str | None = None


def _count(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return 0
    return max(0, int(value))


def _money(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return 0.0
    return max(0.0, float(value))


def _is_claude_result(data: dict[str, Any]) -> bool:
    return data.get("type") == "result" and any(
        name in data for name in ("subtype", "is_error", "total_cost_usd", "num_turns")
    )


def claude_report(data: dict[str, Any]) -> AgentReport:
    """The report of a Claude Code ``--output-format json`` result object."""
    raw = data.get("usage")
    usage = raw if isinstance(raw, dict) else {}
    cache_read = _count(usage.get("cache_read_input_tokens"))
    cache_write = _count(usage.get("cache_creation_input_tokens"))
    turns = _count(data.get("num_turns"))
    spent = Usage(
        input_tokens=_count(usage.get("input_tokens")) + cache_read + cache_write,
        output_tokens=_count(usage.get("output_tokens")), cached_tokens=cache_read,
        cost_usd=_money(data.get("total_cost_usd")), calls=turns or 1,
    )  # fmt: skip
    subtype = data.get("subtype") if isinstance(data.get("subtype"), str) else None
    is_error = data.get("is_error") is True or (subtype or "").startswith("error")
    error: str | None = None
    if is_error:
        text = data.get("result")
        error = (text if isinstance(text, str) and text else subtype or "is_error")[:_ERROR_TEXT_LIMIT]
    return AgentReport(kind="claude", result=data, usage=spent, model=CLAUDE_MODEL, is_error=is_error,
                       subtype=subtype, error=error)  # fmt: skip


class _Codex:
    """Codex's events, summed as they stream by."""

    def __init__(self) -> None:
        self.seen = False
        self.thread_id: str | None = None
        self.message: str | None = None
        self.input = self.cached = self.output = self.turns = 0
        self.errors: list[str] = []

    def add(self, event: dict[str, Any]) -> None:
        self.seen = True
        kind = event.get("type")
        if kind == "thread.started" and isinstance(event.get("thread_id"), str):
            self.thread_id = event["thread_id"]
        elif kind == "turn.completed":
            raw = event.get("usage")
            usage: dict[str, Any] = raw if isinstance(raw, dict) else {}
            self.input += _count(usage.get("input_tokens"))
            self.cached += _count(usage.get("cached_input_tokens"))
            self.output += _count(usage.get("output_tokens"))
            self.turns += 1
        elif kind == "turn.failed":
            self.turns += 1
            error = event.get("error")
            self._error(error.get("message") if isinstance(error, dict) else error)
        elif kind == "error":
            self._error(event.get("message"))
        elif kind == "item.completed":
            item = event.get("item")
            if (
                isinstance(item, dict)
                and item.get("type") == "agent_message"
                and isinstance(item.get("text"), str)
            ):
                self.message = item["text"]

    def _error(self, message: Any) -> None:
        if len(self.errors) < 20:
            self.errors.append(str(message if message is not None else "error")[:_ERROR_TEXT_LIMIT])

    def report(self, model: str | None) -> AgentReport:
        cost = 0.0
        if model:
            model_id = model if model.startswith("openai:") else f"openai:{model}"
            cost = cost_usd(model_id, input_tokens=self.input, cached_tokens=min(self.cached, self.input),
                            output_tokens=self.output)  # fmt: skip
        usage = Usage(input_tokens=self.input, output_tokens=self.output, cached_tokens=self.cached,
                      cost_usd=cost, calls=self.turns)  # fmt: skip
        summary = {
            "thread_id": self.thread_id, "result": self.message, "num_turns": self.turns,
            "usage": {"input_tokens": self.input, "cached_input_tokens": self.cached,
                      "output_tokens": self.output},
            "is_error": bool(self.errors), "errors": list(self.errors), "model": model,
        }  # fmt: skip
        error = "; ".join(self.errors)[:_ERROR_TEXT_LIMIT] or None
        return AgentReport(kind="codex", result=summary, usage=usage, model=CODEX_MODEL,
                           is_error=bool(self.errors), error=error)  # fmt: skip


class OutputScanner:
    """Reads an agent's stdout line by line (so none of it has to be kept) and reports at the end.

    Args:
        codex_model: the model a Codex command names (``-m``), to price its tokens.
    """

    def __init__(self, *, codex_model: str | None = None) -> None:
        self.codex_model = codex_model
        self._claude: dict[str, Any] | None = None
        self._codex = _Codex()
        self._last_json: Any = None

    def feed(self, line: bytes | str) -> None:
        """One line of stdout, without its newline."""
        text = (line.decode("utf-8", "replace") if isinstance(line, bytes) else line).strip()
        if not text.startswith(("{", "[")):
            return
        try:
            data = json.loads(text)
        except (ValueError, RecursionError):  # not JSON, or nested too deep to be an agent's report
            return
        self._take(data)

    def _take(self, data: Any) -> None:
        if isinstance(data, dict):
            if _is_claude_result(data):
                self._claude = data
                return
            if data.get("type") in _CODEX_EVENTS:
                self._codex.add(data)
                return
        if isinstance(data, dict | list):
            self._last_json = data

    def report(self, tail: str = "") -> AgentReport:
        """The report; ``tail`` (the end of stdout) is parsed whole when no line was JSON."""
        if self._claude is None and not self._codex.seen and self._last_json is None and tail.strip():
            with suppress(ValueError, RecursionError):
                self._take(json.loads(tail))  # e.g. a pretty-printed object over several lines
        if self._claude is not None:
            return claude_report(self._claude)
        if self._codex.seen:
            return self._codex.report(self.codex_model)
        return AgentReport(result=self._last_json)


def parse_agent_output(stdout: str, *, codex_model: str | None = None) -> AgentReport:
    """Parse an agent's whole stdout: Claude Code's JSON, Codex's JSONL, or any JSON it printed.

    Args:
        stdout: what the agent printed.
        codex_model: the model a Codex command names, to price its tokens (``gpt-5`` or
            ``openai:gpt-5``); without it a Codex run costs $0.
    """
    scanner = OutputScanner(codex_model=codex_model)
    for line in stdout.splitlines():
        scanner.feed(line)
    return scanner.report(stdout)
