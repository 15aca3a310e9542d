"""What agents print about themselves: Claude Code's JSON, Codex's JSONL, and how failures are classed."""

from __future__ import annotations

import json

import pytest

from fanflow.errors import BranchTimeoutError, RateLimitedError
from fanflow.executors.agent import (
    AgentFailedError,
    AgentRateLimitedError,
    AgentTimeoutError,
    parse_agent_output,
)
from fanflow.executors.agent.failures import classify_failure, retry_after_s, stderr_excerpt
from fanflow.executors.agent.parse import CLAUDE_MODEL, CODEX_MODEL, AgentReport
from fanflow.executors.agent.process import ProcessResult
from fanflow.executors.llm.pricing import cost_usd
from fanflow.result import Usage


def claude_json(**fields: object) -> str:
    data: dict[str, object] = {
        "type": "result", "subtype": "success", "is_error": False, "duration_ms": 2000, "num_turns": 3,
        "result": "All done.", "session_id": "s-1", "total_cost_usd": 0.0421,
        "usage": {"input_tokens": 10, "output_tokens": 250, "cache_read_input_tokens": 4000,
                  "cache_creation_input_tokens": 600},
    }  # fmt: skip
    data.update(fields)
    return json.dumps(data)


def codex_jsonl(*turns: tuple[int, int, int], failed: str | None = None) -> str:
    lines = [{"type": "thread.started", "thread_id": "t-9"}]
    for index, (tokens_in, cached, tokens_out) in enumerate(turns):
        message = {"id": f"i{index}", "type": "agent_message", "text": f"turn {index}"}
        usage = {"input_tokens": tokens_in, "cached_input_tokens": cached, "output_tokens": tokens_out}
        lines += [
            {"type": "turn.started"},
            {"type": "item.completed", "item": message},
            {"type": "turn.completed", "usage": usage},
        ]
    if failed:
        lines += [{"type": "turn.started"}, {"type": "turn.failed", "error": {"message": failed}}]
    return "\n".join(json.dumps(line) for line in lines) + "\n"


def test_claude_usage_counts_cache_reads_and_writes_as_input() -> None:
    report = parse_agent_output("some log line\n" + claude_json() + "\n")
    assert report.kind == "claude"
    assert report.model == CLAUDE_MODEL
    assert report.usage == Usage(
        input_tokens=4610, output_tokens=250, cached_tokens=4000, cost_usd=0.0421, calls=3
    )
    assert report.result["result"] == "All done."
    assert not report.is_error
    assert report.subtype == "success"


def test_claude_without_turns_counts_one_call_and_tolerates_missing_usage() -> None:
    report = parse_agent_output(json.dumps({"type": "result", "subtype": "success", "is_error": False}))
    assert report.usage == Usage(calls=1)


def test_claude_pretty_printed_object_is_parsed_whole() -> None:
    report = parse_agent_output(json.dumps(json.loads(claude_json()), indent=2))
    assert report.kind == "claude"
    assert report.usage.cost_usd == pytest.approx(0.0421)


@pytest.mark.parametrize(
    ("fields", "subtype"),
    [
        ({"is_error": True, "result": "API Error: boom"}, "success"),
        ({"subtype": "error_max_turns", "is_error": False}, "error_max_turns"),
    ],
)
def test_claude_errors(fields: dict[str, object], subtype: str) -> None:
    report = parse_agent_output(claude_json(**fields))
    assert report.is_error
    assert report.subtype == subtype
    assert report.error


def test_codex_usage_is_summed_over_turns_and_priced_by_model() -> None:
    stdout = codex_jsonl((1000, 400, 50), (2000, 1500, 70))
    report = parse_agent_output(stdout, codex_model="gpt-4o-mini")
    expected = cost_usd("openai:gpt-4o-mini", input_tokens=3000, cached_tokens=1900, output_tokens=120)
    assert expected > 0
    assert report.kind == "codex"
    assert report.model == CODEX_MODEL
    assert report.usage == Usage(
        input_tokens=3000, output_tokens=120, cached_tokens=1900, cost_usd=expected, calls=2
    )
    assert report.result["thread_id"] == "t-9"
    assert report.result["result"] == "turn 1"
    assert not report.is_error


def test_codex_without_a_known_price_costs_nothing() -> None:
    assert parse_agent_output(codex_jsonl((10, 0, 5)), codex_model="unpriced-model-x").usage.cost_usd == 0
    assert parse_agent_output(codex_jsonl((10, 0, 5))).usage.cost_usd == 0


def test_codex_failed_turn_is_an_error() -> None:
    report = parse_agent_output(codex_jsonl((10, 0, 5), failed="stream error: 429 Too Many Requests"))
    assert report.is_error
    assert report.usage.calls == 2
    assert "429" in (report.error or "")


def test_other_json_and_plain_text() -> None:
    assert parse_agent_output('progress\n{"answer": 42}\n').result == {"answer": 42}
    assert parse_agent_output("[1, 2]").result == [1, 2]
    plain = parse_agent_output("hello\nworld\n")
    assert plain == AgentReport()
    assert parse_agent_output("[" * 100_000 + "]" * 100_000) == AgentReport()


def _process(exit_code: int = 0, stderr: str = "", timed_out: bool = False) -> ProcessResult:
    return ProcessResult(
        exit_code=exit_code, stdout="", stderr=stderr, stdout_bytes=0, stderr_bytes=len(stderr),
        timed_out=timed_out, duration_s=1.0,
    )  # fmt: skip


def test_success_is_no_failure() -> None:
    assert classify_failure(_process(), parse_agent_output(claude_json()), {}, timeout_s=None) is None


def test_rate_limit_in_the_result_is_rate_limited_with_retry_after() -> None:
    report = parse_agent_output(
        claude_json(is_error=True, result='API Error: 429 {"type":"rate_limit_error"} retry-after: 17')
    )
    error = classify_failure(_process(1), report, {"exit_code": 1}, timeout_s=None)
    assert isinstance(error, AgentRateLimitedError)
    assert isinstance(error, RateLimitedError)
    assert error.retryable
    assert error.retry_after_s == 17
    assert error.output == {"exit_code": 1}
    assert error.usage.cost_usd == pytest.approx(0.0421)
    assert error.model == CLAUDE_MODEL


def test_overloaded_on_stderr_is_rate_limited() -> None:
    error = classify_failure(_process(2, "Error: overloaded_error, try again in 1500ms"), AgentReport(), {},
                             timeout_s=None)  # fmt: skip
    assert isinstance(error, AgentRateLimitedError)
    assert error.retry_after_s == pytest.approx(1.5)


@pytest.mark.parametrize("subtype", ["error_max_turns", "error_max_budget_usd"])
def test_out_of_turns_or_budget_is_not_retryable(subtype: str) -> None:
    report = parse_agent_output(claude_json(subtype=subtype, is_error=True, result=""))
    error = classify_failure(_process(1), report, {}, timeout_s=None)
    assert isinstance(error, AgentFailedError)
    assert not error.retryable
    assert error.reason == subtype
    assert subtype in str(error)


def test_non_zero_exit_message_has_exit_code_and_stderr_tail() -> None:
    stderr = "\n".join(f"line {n}" for n in range(100)) + "\nfatal: something broke\n"
    error = classify_failure(_process(3, stderr), AgentReport(), {}, timeout_s=None)
    assert isinstance(error, AgentFailedError)
    assert not error.retryable
    message = str(error)
    assert "exit code 3" in message
    assert "fatal: something broke" in message
    assert "line 10\n" not in message
    assert len(message) < 1500


def test_signal_exit_is_retryable_and_timeout_is_a_branch_timeout() -> None:
    killed = classify_failure(_process(-9), AgentReport(), {}, timeout_s=None)
    assert isinstance(killed, AgentFailedError)
    assert killed.retryable
    timed_out = classify_failure(
        _process(-15, timed_out=True), AgentReport(), {"timed_out": True}, timeout_s=2
    )
    assert isinstance(timed_out, AgentTimeoutError)
    assert isinstance(timed_out, BranchTimeoutError)
    assert "2s" in str(timed_out)


def test_is_error_with_exit_zero_fails() -> None:
    report = parse_agent_output(claude_json(is_error=True, result="could not do it"))
    error = classify_failure(_process(0), report, {}, timeout_s=None)
    assert isinstance(error, AgentFailedError)
    assert "could not do it" in str(error)


def test_retry_after_forms() -> None:
    assert retry_after_s("Claude AI usage limit reached|1700000100", now=1700000000) == 100
    assert retry_after_s("please try again in 2m") == 120
    assert retry_after_s("Retry-After: 99999999") == 3600
    assert retry_after_s("nothing here") is None


def test_stderr_excerpt_is_bounded() -> None:
    assert len(stderr_excerpt("y" * 100_000)) == 1000
    assert stderr_excerpt("\n\na\n\nb\n") == "a\nb"
