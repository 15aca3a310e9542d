"""What the job store keeps and answers: a job's stored spec, its live state, and the verdicts of
the scripts that begin a branch, record an outcome and sweep a job (``fanflow.store``)."""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict

from fanflow.pipeline.spec import Pipeline
from fanflow.result import JobStatus
from fanflow.spec import FanOut

__all__ = ["BranchVerdict", "JobMeta", "Recorded", "StoredJob", "SweepReport"]


class StoredJob(BaseModel):
    """What the store keeps of a submitted job: its spec and when it was created.

    A pipeline's job keeps the ``Pipeline`` too; its ``spec`` is then the fan-out of its nodes
    (one subtask per node, as declared), which the branch machinery runs like any other.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    spec: FanOut
    created_at: float
    pipeline: Pipeline | None = None

    @property
    def deadline_at(self) -> float | None:
        """When the job's ``deadline_s`` runs out, if it has one."""
        return self.created_at + self.spec.deadline_s if self.spec.deadline_s else None


@dataclass(frozen=True, slots=True)
class BranchVerdict:
    """What ``begin_branch`` decided: ``run`` or why not, and the delivery count."""

    verdict: str
    deliveries: int
    cancel_reason: str | None = None


@dataclass(frozen=True, slots=True)
class Recorded:
    """What ``record_outcome`` did.

    Attributes:
        recorded: the outcome was written (False: a duplicate delivery's, which changed nothing).
        complete: this call gave the round its last outcome (a pipeline's merge is sent now).
        ready: a pipeline's nodes this outcome released whose dependencies are all done now
            (marked queued: the caller sends them).
    """

    recorded: bool
    complete: bool = False
    ready: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return self.recorded


@dataclass(frozen=True, slots=True)
class SweepReport:
    """What ``sweep`` found on one job.

    Attributes:
        state: ``active``, ``final`` (merged: nothing to do) or ``gone`` (expired).
        round: the job's current round.
        lapsed: branches whose lease lapsed (their worker died): send again now.
        suspects: branches sent but never begun while the job stalled: send again if the broker
            no longer holds their message.
        merge: the round's merge must be sent again (it never ran, or its worker died).
    """

    state: str
    round: int
    lapsed: list[str]
    suspects: list[str]
    merge: bool


@dataclass(frozen=True, slots=True)
class JobMeta:
    """A job's live state: status, the current round's progress, the first error."""

    job_id: str
    name: str
    status: JobStatus
    round: int
    size: int
    done: int
    failed: int
    total: int
    created_at: float
    finished_at: float | None
    first_error: str | None
    merges: int
    poison: int = 0

    @classmethod
    def from_hash(cls, job_id: str, data: dict[str, str]) -> JobMeta:
        """Build from the meta hash."""
        return cls(
            job_id=job_id,
            name=data.get("name", ""),
            status=JobStatus(data.get("status", "pending")),
            round=int(data.get("round", 0)),
            size=int(data.get("size", 0)),
            done=int(data.get("done", 0)),
            failed=int(data.get("failed", 0)),
            total=int(data.get("total", 0)),
            created_at=float(data.get("created_at", 0)),
            finished_at=float(data["finished_at"]) if data.get("finished_at") else None,
            first_error=data.get("first_error"),
            merges=int(data.get("merges", 0)),
            poison=int(data.get("poison", 0)),
        )
