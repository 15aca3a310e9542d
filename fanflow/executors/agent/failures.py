"""How an agent run failed, as the errors the branch runner knows how to treat.

- Ran past its timeout (its process group was stopped): ``AgentTimeoutError``, a
  ``BranchTimeoutError``.
- Rate limited or overloaded ("rate_limit", "rate limit", "429", "overloaded", "usage limit" in
  what the agent or its stderr said): ``AgentRateLimitedError``, a ``RateLimitedError``, with
  ``retry_after_s`` when the text gives one ("retry after 30", "try again in 1.5s", Claude's
  "usage limit reached|<epoch>").
- Out of turns or budget (``error_max_turns``, ``error_max_budget_usd``): ``AgentFailedError``, not
  retryable (another attempt would hit the same ceiling).
- Any other non-zero exit or ``is_error``: ``AgentFailedError``, retryable only when a signal
  ended the process.

Every one carries the run's ``output`` object (exit code, tails, diff, branch ...), its ``usage``
and ``model`` (``AgentError``), so the work and what it cost are not lost with the attempt. Its
message holds the exit code, the agent's own error text and the last lines of stderr, bounded.
"""

from __future__ import annotations

import re
import time
from typing import Any

from fanflow.errors import BranchTimeoutError, ExecutorError, RateLimitedError
from fanflow.executors.agent.parse import AgentReport
from fanflow.executors.agent.process import ProcessResult
from fanflow.result import Usage

__all__ = [
    "NON_RETRYABLE_SUBTYPES",
    "AgentError",
    "AgentFailedError",
    "AgentRateLimitedError",
    "AgentTimeoutError",
    "classify_failure",
    "stderr_excerpt",
]

#: Claude result subtypes another attempt would end the same way.
NON_RETRYABLE_SUBTYPES = frozenset({"error_max_turns", "error_max_budget_usd"})

_RATE_LIMITED = re.compile(r"rate[_ \-]?limit|\b429\b|overloaded|usage limit", re.IGNORECASE)
_RETRY_AFTER = re.compile(r"retry[_ \-]after\D{0,4}(\d+(?:\.\d+)?)", re.IGNORECASE)
_TRY_AGAIN = re.compile(r"try again in\s*(\d+(?:\.\d+)?)\s*(ms|s|sec|seconds?|m|min|minutes?)\b", re.I)
_RESET_EPOCH = re.compile(r"usage limit reached\|(\d{9,11})\b", re.IGNORECASE)
#: A retry-after longer than this is capped (the branch runner may sleep it out).
MAX_RETRY_AFTER_S = 3600.0
_STDERR_LINES = 10
_STDERR_CHARS = 1000
_SCAN_CHARS = 8000


class AgentError:
    """What every agent failure carries besides its message.

    Attributes:
        output: the run's output object (None when the agent never started).
        usage: what the run spent before it failed.
        model: the model id its usage belongs to.
    """

    output: dict[str, Any] | None
    usage: Usage
    model: str | None

    def _attach(self, output: dict[str, Any] | None, usage: Usage | None, model: str | None) -> None:
        self.output = output
        self.usage = usage if usage is not None else Usage()
        self.model = model


class AgentFailedError(AgentError, ExecutorError):
    """The agent failed: a non-zero exit, ``is_error``, out of turns or budget, or it could not start.

    Attributes:
        reason: Claude's result subtype (``error_max_turns`` ...) when it gave one.
    """

    def __init__(
        self,
        message: str,
        *,
        output: dict[str, Any] | None = None,
        usage: Usage | None = None,
        model: str | None = None,
        retryable: bool = False,
        reason: str | None = None,
    ) -> None:
        self.retryable = retryable
        self.reason = reason
        self._attach(output, usage, model)
        super().__init__(message)


class AgentRateLimitedError(AgentError, RateLimitedError):
    """The agent's provider refused it for now (429, overloaded, a usage limit)."""

    def __init__(
        self,
        message: str,
        *,
        retry_after_s: float | None = None,
        output: dict[str, Any] | None = None,
        usage: Usage | None = None,
        model: str | None = None,
    ) -> None:
        self._attach(output, usage, model)
        super().__init__(message, retry_after_s=retry_after_s)


class AgentTimeoutError(AgentError, BranchTimeoutError):
    """The agent ran past its timeout; its whole process group was stopped."""

    def __init__(
        self,
        message: str,
        *,
        output: dict[str, Any] | None = None,
        usage: Usage | None = None,
        model: str | None = None,
    ) -> None:
        self._attach(output, usage, model)
        super().__init__(message)


def stderr_excerpt(stderr: str) -> str:
    """The last lines of stderr, bounded (for error messages)."""
    lines = [line for line in stderr.strip().splitlines() if line.strip()][-_STDERR_LINES:]
    text = "\n".join(lines)
    return text[-_STDERR_CHARS:]


def retry_after_s(text: str, *, now: float | None = None) -> float | None:
    """A wait the text asks for, in seconds (capped at ``MAX_RETRY_AFTER_S``), or None."""
    seconds: float | None = None
    if match := _RESET_EPOCH.search(text):
        seconds = float(match.group(1)) - (time.time() if now is None else now)
    elif match := _RETRY_AFTER.search(text):
        seconds = float(match.group(1))
    elif match := _TRY_AGAIN.search(text):
        unit = match.group(2).lower()
        factor = 0.001 if unit == "ms" else 60.0 if unit.startswith("m") else 1.0
        seconds = float(match.group(1)) * factor
    if seconds is None:
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_S)


def _message(head: str, process: ProcessResult, report: AgentReport) -> str:
    parts = [head]
    if report.subtype and report.subtype != "success":
        parts.append(f" ({report.subtype})")
    if report.error and report.error != report.subtype:
        parts.append(f": {report.error[:500]}")
    excerpt = stderr_excerpt(process.stderr)
    if excerpt:
        parts.append(f"; stderr: {excerpt}")
    return "".join(parts)


def classify_failure(
    process: ProcessResult, report: AgentReport, output: dict[str, Any], *, timeout_s: float | None
) -> ExecutorError | None:
    """The error a finished run failed with, or None when it succeeded.

    Args:
        process: how the process ended.
        report: what its stdout said.
        output: the run's output object (attached to the error).
        timeout_s: the timeout it ran under (for the message).
    """
    if process.cancelled:
        head = f"its job was cancelled; its process group was stopped (exit code {process.exit_code})"
        return AgentFailedError(
            _message(head, process, report), output=output, usage=report.usage, model=report.model,
            retryable=True,
        )  # fmt: skip
    if process.timed_out:
        limit = f"{timeout_s:g}s" if timeout_s is not None else "its timeout"
        head = f"the agent ran longer than {limit}; its process group was stopped"
        head += f" (exit code {process.exit_code})"
        return AgentTimeoutError(
            _message(head, process, report), output=output, usage=report.usage, model=report.model
        )
    if process.exit_code == 0 and not report.is_error:
        return None
    head = f"the agent failed with exit code {process.exit_code}"
    if process.exit_code == 0:
        head = "the agent reported an error (exit code 0)"
    message = _message(head, process, report)
    said = " ".join(filter(None, [report.error, report.subtype, process.stderr[-_SCAN_CHARS:]]))
    if report.subtype not in NON_RETRYABLE_SUBTYPES and _RATE_LIMITED.search(said):
        return AgentRateLimitedError(
            message, retry_after_s=retry_after_s(said), output=output, usage=report.usage, model=report.model
        )
    if report.subtype in NON_RETRYABLE_SUBTYPES:
        return AgentFailedError(
            message,
            retryable=False,
            reason=report.subtype,
            output=output,
            usage=report.usage,
            model=report.model,
        )
    return AgentFailedError(
        message,
        retryable=process.exit_code < 0,
        reason=report.subtype,
        output=output,
        usage=report.usage,
        model=report.model,
    )
