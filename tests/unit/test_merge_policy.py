"""Merge strategies and failure policies over outcomes, without Redis."""

from __future__ import annotations

from typing import Any

import pytest

from fanflow.branch import check_success, is_retryable
from fanflow.errors import MergeConflictError, MergeError, SuccessCriteriaError, TransientError
from fanflow.merge import merge_outputs
from fanflow.policy import evaluate_policy
from fanflow.result import ErrorInfo, JobStatus, OutcomeStatus, SubtaskOutcome
from fanflow.spec import (
    AllOrNothing,
    BestEffort,
    ConcatenateMerge,
    CustomMerge,
    KeyMerge,
    PyCall,
    Quorum,
    RetryPolicy,
    Subtask,
    SuccessCriteria,
)


def ok(key: str, output: Any, finished: float = 1.0) -> SubtaskOutcome:
    return SubtaskOutcome(key=key, status=OutcomeStatus.SUCCEEDED, output=output, finished_at=finished)


def bad(key: str, finished: float = 1.0, status: OutcomeStatus = OutcomeStatus.FAILED) -> SubtaskOutcome:
    error = ErrorInfo(type="RuntimeError", message=f"{key} broke")
    return SubtaskOutcome(key=key, status=status, error=error, finished_at=finished)


def subtasks(*keys: str, required: tuple[str, ...] = ()) -> list[Subtask]:
    run = PyCall(function="tests.callables:echo")
    return [Subtask(key=k, run=run, required=k in required) for k in keys]


def test_concatenate_keeps_declared_order_and_joins_with_separator() -> None:
    outcomes = [ok("a", "x"), ok("b", {"n": 1}), ok("c", "z")]
    assert merge_outputs(ConcatenateMerge(), outcomes) == ["x", {"n": 1}, "z"]
    assert merge_outputs(ConcatenateMerge(separator="\n"), outcomes) == 'x\n{"n": 1}\nz'


def test_key_merge_by_branch_key() -> None:
    assert merge_outputs(KeyMerge(), [ok("a", 1), ok("b", 2)]) == {"a": 1, "b": 2}


@pytest.mark.parametrize(
    ("rule", "expected"),
    [
        ("first", {"id": "e1", "color": "red"}),
        ("last", {"id": "e1", "size": 3}),
        ("update", {"id": "e1", "color": "red", "size": 3}),
        ("collect", [{"id": "e1", "color": "red"}, {"id": "e1", "size": 3}]),
    ],
)
def test_key_merge_by_field_resolves_conflicts(rule: str, expected: Any) -> None:
    outcomes = [ok("a", [{"id": "e1", "color": "red"}, {"id": "e2"}]), ok("b", {"id": "e1", "size": 3})]
    merged = merge_outputs(KeyMerge(field="id", on_conflict=rule), outcomes)  # type: ignore[arg-type]
    assert merged["e1"] == expected
    assert list(merged) == ["e1", "e2"]


def test_key_merge_conflict_error_names_entity_and_both_branches() -> None:
    outcomes = [ok("a", {"id": "e1"}), ok("b", {"id": "e1"})]
    with pytest.raises(MergeConflictError, match=r"entity 'e1' comes from branch 'a' and from branch 'b'"):
        merge_outputs(KeyMerge(field="id"), outcomes)
    with pytest.raises(MergeError, match="without that field"):
        merge_outputs(KeyMerge(field="id"), [ok("a", {"name": "x"})])


def test_custom_merge_gets_outcomes_context_and_options() -> None:
    spec = CustomMerge(function="tests.callables:join_keys", options={"separator": "|"})
    assert merge_outputs(spec, [ok("a", 1), ok("b", 2)], context="ctx") == "ctx:a|b"
    with pytest.raises(MergeError, match="raised TypeError"):
        merge_outputs(CustomMerge(function="tests.callables:join_keys", options={"bogus": 1}), [])


def test_all_or_nothing_fails_with_the_first_failure_in_time() -> None:
    outcomes = [
        ok("a", 1),
        bad("b", finished=5),
        bad("c", finished=2),
        bad("d", status=OutcomeStatus.CANCELLED),
    ]
    verdict = evaluate_policy(AllOrNothing(), subtasks("a", "b", "c", "d"), outcomes, cancel_reason="failure")
    assert verdict.status is JobStatus.FAILED
    assert verdict.error is not None and verdict.error.message == "c: c broke"
    assert not verdict.merges


def test_best_effort_is_partial_until_nothing_succeeded() -> None:
    keys = subtasks("a", "b")
    assert (
        evaluate_policy(BestEffort(), keys, [ok("a", 1), ok("b", 2)], cancel_reason=None).status
        is JobStatus.SUCCEEDED
    )
    assert (
        evaluate_policy(BestEffort(), keys, [ok("a", 1), bad("b")], cancel_reason=None).status
        is JobStatus.PARTIAL
    )
    verdict = evaluate_policy(BestEffort(), keys, [bad("a"), bad("b")], cancel_reason=None)
    assert verdict.status is JobStatus.FAILED and "no branch succeeded" in (
        verdict.error.message if verdict.error else ""
    )


def test_quorum_counts_and_respects_required_branches() -> None:
    keys = subtasks("a", "b", "c", required=("c",))
    policy = Quorum(min_succeeded=2)
    assert evaluate_policy(policy, keys, [ok("a", 1), bad("b"), ok("c", 3)], cancel_reason=None).status is (
        JobStatus.PARTIAL
    )
    missing_required = evaluate_policy(policy, keys, [ok("a", 1), ok("b", 2), bad("c")], cancel_reason=None)
    assert missing_required.status is JobStatus.FAILED
    assert missing_required.error is not None and "required branch 'c'" in missing_required.error.message
    short = evaluate_policy(
        Quorum(min_fraction=0.9), keys, [ok("a", 1), bad("b"), ok("c", 3)], cancel_reason=None
    )
    assert short.status is JobStatus.FAILED and short.error is not None
    assert "2 of 3 branches succeeded; the quorum needs 3" in short.error.message


def test_user_cancel_wins_over_every_policy() -> None:
    verdict = evaluate_policy(BestEffort(), subtasks("a"), [ok("a", 1)], cancel_reason="user")
    assert verdict.status is JobStatus.CANCELLED


def test_success_criteria() -> None:
    check_success(
        {"a": 1, "b": "xyz"}, SuccessCriteria(required_fields=["a"], contains=["xyz"], not_empty=True)
    )
    with pytest.raises(SuccessCriteriaError, match="empty"):
        check_success("", SuccessCriteria(not_empty=True))
    with pytest.raises(SuccessCriteriaError, match=r"lacks required fields \['b'\]"):
        check_success({"a": 1}, SuccessCriteria(required_fields=["a", "b"]))
    with pytest.raises(SuccessCriteriaError, match="max_chars"):
        check_success("x" * 11, SuccessCriteria(max_chars=10))


def test_retryable_errors() -> None:
    policy = RetryPolicy(attempts=3, retry_on=["ConnectionError", "builtins.KeyError"])
    assert is_retryable(TransientError("429"), RetryPolicy())
    assert is_retryable(ConnectionResetError(), policy)  # a subclass of a named class
    assert is_retryable(KeyError("x"), policy)
    assert not is_retryable(ValueError("x"), policy)
