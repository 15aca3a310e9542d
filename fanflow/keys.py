"""Every Redis key fanflow writes, named in one place.

A job's keys share the prefix ``{prefix}:job:{{job_id}}:`` and expire together after the
configured result TTL, independently of Celery's own chord keys. The braces are a Redis Cluster
hash tag: every key of one job lives in one slot, so each Lua script touches one slot.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["JobKeys", "idempotency_key", "jobs_index_key"]


@dataclass(frozen=True, slots=True)
class JobKeys:
    """The keys of one job.

    Attributes:
        meta: hash — name, status, round, size/done counters of the current round, first error.
        spec: string — the ``FanOut`` as JSON (workers read it once per job and cache it).
        outcomes: hash — branch key → latest ``SubtaskOutcome`` JSON.
        rounds: hash — branch key → round of that latest outcome (makes writes idempotent).
        deliveries: hash — ``key:round`` → how often the branch's message was delivered.
        running: sorted set — branch key → lease expiry, for ``max_concurrency``.
        cancel: string — set (to the reason) when the job is being cancelled.
        events: stream — progress events (started / finished / job), for ``fanflow watch``.
        result: string — the ``JobResult`` JSON once merged.
        final: stream — one entry per merge; ``wait()`` blocks on it.
    """

    meta: str
    spec: str
    outcomes: str
    rounds: str
    deliveries: str
    running: str
    cancel: str
    events: str
    result: str
    final: str

    @classmethod
    def of(cls, prefix: str, job_id: str) -> JobKeys:
        """The keys of job ``job_id`` under ``prefix``."""
        base = f"{prefix}:job:{{{job_id}}}:"
        return cls(**{name: base + name for name in cls.__slots__})

    def all(self) -> list[str]:
        """Every key of the job (for expiry and deletion)."""
        return [getattr(self, name) for name in self.__slots__]


def idempotency_key(prefix: str, key: str) -> str:
    """The key mapping a producer's idempotency key to the job it created."""
    return f"{prefix}:idempotency:{key}"


def jobs_index_key(prefix: str) -> str:
    """Sorted set of job ids by creation time (for listing recent jobs)."""
    return f"{prefix}:jobs"
