"""Failure policies: given every branch's outcome, decide the job's status and error."""

from __future__ import annotations

import math
from dataclasses import dataclass

from fanflow.result import ErrorInfo, JobStatus, OutcomeStatus, SubtaskOutcome
from fanflow.spec import AllOrNothing, BestEffort, FailurePolicy, Quorum, Subtask

__all__ = ["Verdict", "evaluate_policy"]


@dataclass(frozen=True, slots=True)
class Verdict:
    """The job's status under its policy, and the error that explains a failure."""

    status: JobStatus
    error: ErrorInfo | None = None

    @property
    def merges(self) -> bool:
        """True when the merge should run (the job succeeded, fully or partly)."""
        return self.status in (JobStatus.SUCCEEDED, JobStatus.PARTIAL)


def _first_failure(outcomes: list[SubtaskOutcome]) -> SubtaskOutcome | None:
    failed = [o for o in outcomes if o.status is OutcomeStatus.FAILED]
    return min(failed, key=lambda o: o.finished_at or math.inf, default=None)


def _branch_error(outcome: SubtaskOutcome, prefix: str = "") -> ErrorInfo:
    error = outcome.error or ErrorInfo(type="Failed", message="no error recorded")
    return ErrorInfo(
        type=error.type, message=f"{prefix}{outcome.key}: {error.message}", retryable=error.retryable
    )


def evaluate_policy(
    policy: FailurePolicy,
    subtasks: list[Subtask],
    outcomes: list[SubtaskOutcome],
    *,
    cancel_reason: str | None,
) -> Verdict:
    """Decide the job's status from its outcomes (in declared order).

    A user's cancel wins over every policy. Under ``all_or_nothing`` the job's error is the first
    failure in time (the one that cancelled the others).
    """
    succeeded = sum(1 for o in outcomes if o.status is OutcomeStatus.SUCCEEDED)
    everything = succeeded == len(outcomes)
    first = _first_failure(outcomes)
    if cancel_reason == "user":
        return Verdict(JobStatus.CANCELLED, ErrorInfo(type="Cancelled", message="the job was cancelled"))
    if everything:
        return Verdict(JobStatus.SUCCEEDED)
    match policy:
        case AllOrNothing():
            if first is None:  # nothing failed, yet not everything succeeded: cancelled branches
                stopped = sum(1 for o in outcomes if o.status is OutcomeStatus.CANCELLED)
                if cancel_reason == "budget":
                    message = f"the job's budget is spent: {stopped} branches were not run"
                    return Verdict(JobStatus.FAILED, ErrorInfo(type="BudgetExhausted", message=message))
                message = f"{stopped} branches were cancelled"
                return Verdict(JobStatus.FAILED, ErrorInfo(type="Cancelled", message=message))
            return Verdict(JobStatus.FAILED, _branch_error(first))
        case BestEffort():
            if succeeded == 0:
                error = _branch_error(first, "no branch succeeded; first failure ") if first else None
                return Verdict(JobStatus.FAILED, error)
            return Verdict(JobStatus.PARTIAL)
        case Quorum():
            return _quorum(policy, subtasks, outcomes, succeeded)
    raise TypeError(f"unknown failure policy {policy!r}")  # pragma: no cover - the union is closed


def _quorum(
    policy: Quorum, subtasks: list[Subtask], outcomes: list[SubtaskOutcome], succeeded: int
) -> Verdict:
    by_key = {o.key: o for o in outcomes}
    for subtask in subtasks:
        outcome = by_key.get(subtask.key)
        if subtask.required and (outcome is None or outcome.status is not OutcomeStatus.SUCCEEDED):
            reason = outcome.error.message if outcome and outcome.error else "did not succeed"
            return Verdict(
                JobStatus.FAILED,
                ErrorInfo(type="QuorumNotMet", message=f"required branch {subtask.key!r} failed: {reason}"),
            )
    needed = max(policy.min_succeeded or 0, math.ceil((policy.min_fraction or 0) * len(outcomes)))
    if succeeded < needed:
        return Verdict(
            JobStatus.FAILED,
            ErrorInfo(
                type="QuorumNotMet",
                message=f"{succeeded} of {len(outcomes)} branches succeeded; the quorum needs {needed}",
                retryable=True,
            ),
        )
    return Verdict(JobStatus.PARTIAL)
