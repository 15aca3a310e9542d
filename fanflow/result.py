"""What comes back: each branch's ``SubtaskOutcome`` and the job's ``JobResult``.

These models are what crosses the wire (JSON via pydantic), what the job store keeps and what
``fanflow result --output json`` prints.
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field, JsonValue

from fanflow.errors import JobFailedError

__all__ = ["ErrorInfo", "JobResult", "JobStatus", "OutcomeStatus", "SubtaskOutcome", "Usage"]


class OutcomeStatus(StrEnum):
    """Final state of one branch."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    SKIPPED = "skipped"
    #: A pipeline node a guard said no to: not run, and not a failure.
    BLOCKED = "blocked"


class JobStatus(StrEnum):
    """State of a whole job. ``partial``: merged from the successes, some branches flagged."""

    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    PARTIAL = "partial"
    FAILED = "failed"
    CANCELLED = "cancelled"
    #: A pipeline whose guard said no: nothing it guards ran (a decision, not a failure).
    BLOCKED = "blocked"

    @property
    def is_final(self) -> bool:
        """True once the job has a result."""
        return self not in (JobStatus.PENDING, JobStatus.RUNNING)


class _Result(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Usage(_Result):
    """Tokens and money a branch (or a job) spent."""

    input_tokens: int = Field(0, description="every prompt token billed, cache reads and writes included")
    output_tokens: int = 0
    cached_tokens: int = Field(0, description="the part of input_tokens read from a prompt cache")
    cost_usd: float = 0.0
    calls: int = Field(0, description="model calls made")

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            input_tokens=self.input_tokens + other.input_tokens,
            output_tokens=self.output_tokens + other.output_tokens,
            cached_tokens=self.cached_tokens + other.cached_tokens,
            cost_usd=round(self.cost_usd + other.cost_usd, 10),
            calls=self.calls + other.calls,
        )

    @property
    def total_tokens(self) -> int:
        """Input plus output tokens."""
        return self.input_tokens + self.output_tokens

    @property
    def is_zero(self) -> bool:
        """True when nothing was spent."""
        return self.total_tokens == 0 and self.calls == 0 and self.cost_usd == 0


class ErrorInfo(_Result):
    """Why a branch (or a job) failed: the exception's type name, its message, whether a retry may help."""

    type: str
    message: str
    retryable: bool = False


class SubtaskOutcome(_Result):
    """The final outcome of one branch in one round (round 0 is the first run, each retry adds one)."""

    key: str
    status: OutcomeStatus
    output: JsonValue = None
    error: ErrorInfo | None = None
    attempts: int = 0
    usage: Usage = Field(default_factory=Usage)
    usage_by_model: dict[str, Usage] = Field(
        default_factory=dict, description="the branch's usage per model (agents may report several)"
    )
    round: int = 0
    worker: str | None = None
    started_at: float | None = None
    finished_at: float | None = None

    @property
    def succeeded(self) -> bool:
        """True when the branch succeeded."""
        return self.status is OutcomeStatus.SUCCEEDED

    @property
    def duration_s(self) -> float | None:
        """Wall time of the branch, when it ran."""
        if self.started_at is None or self.finished_at is None:
            return None
        return self.finished_at - self.started_at


class JobResult(_Result):
    """A finished job: the merged output, every branch's outcome in declared order, flags and usage."""

    job_id: str
    name: str
    status: JobStatus
    merged: JsonValue = None
    outcomes: list[SubtaskOutcome]
    flagged: list[str] = Field(default_factory=list, description="keys of branches that did not succeed")
    cancelled: list[str] = Field(default_factory=list)
    error: ErrorInfo | None = None
    usage: Usage = Field(default_factory=Usage, description="every call of the job, merge included")
    usage_by_model: dict[str, Usage] = Field(default_factory=dict)
    merge_usage: Usage = Field(default_factory=Usage, description="what the merge's own calls spent")
    budget_exhausted: bool = Field(False, description="the budget ran out: branches were stopped")
    blocked_by: str | None = Field(None, description="a pipeline's guard that said no")
    round: int = 0
    created_at: float | None = None
    finished_at: float | None = None

    def outcome(self, key: str) -> SubtaskOutcome:
        """The outcome of the branch with this key (``KeyError`` if none)."""
        for outcome in self.outcomes:
            if outcome.key == key:
                return outcome
        raise KeyError(key)

    def raise_for_status(self) -> JobResult:
        """Raise ``JobFailedError`` if the job failed or was cancelled; return self otherwise."""
        if self.status in (JobStatus.FAILED, JobStatus.CANCELLED):
            detail = f": {self.error.type}: {self.error.message}" if self.error else ""
            raise JobFailedError(f"job {self.job_id} ({self.name}) {self.status.value}{detail}")
        return self
