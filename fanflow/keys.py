"""Every Redis key fanflow writes, named in one place.

A job's keys share the prefix ``{prefix}:job:{{job_id}}:`` and expire together after the
configured result TTL, independently of Celery's own chord keys. The braces are a Redis Cluster
hash tag: every key of one job lives in one slot, so each Lua script touches one slot.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["JobKeys", "active_jobs_key", "idempotency_key", "jobs_index_key", "sweeper_lock_key"]


@dataclass(frozen=True, slots=True)
class JobKeys:
    """The keys of one job.

    Attributes:
        meta: hash — name, status, round, size/done counters of the current round, first error.
        spec: string — the ``FanOut`` as JSON (workers read it once per job and cache it).
        outcomes: hash — branch key → latest ``SubtaskOutcome`` JSON.
        rounds: hash — branch key → round of that latest outcome (makes writes idempotent).
        deliveries: hash — ``key:round`` → how often the branch began running in that round.
        leases: sorted set — branch key (or ``#merge``) → lease expiry in ms of Redis server time.
            A running branch's worker renews its lease (heartbeat); a lapsed lease means its
            worker died, and the sweeper delivers the branch again. Also counts ``max_concurrency``.
        owners: hash — branch key (or ``#merge``) → token of the delivery holding the lease.
        queued: set — branch keys of the current round that were sent but have not begun.
        sent: hash — branch key (or ``#merge``) → when the sweeper last sent or checked it (ms).
        cancel: string — set (to the reason) when the job is being cancelled.
        events: stream — progress events (started / finished / job), for ``fanflow watch``.
        result: string — the ``JobResult`` JSON once merged.
        final: stream — one entry per merge; ``wait()`` blocks on it.
        usage: hash — what the job's calls spent, per model: ``<model>|in``, ``|out``, ``|cached``,
            ``|cost`` (nano-USD), ``|calls``; every call counted once, merge calls included.
        budget: hash — ``spent_tokens``, ``spent_cost`` (nano-USD), ``reserved_tokens``,
            ``reserved_cost`` and one ``r:<id>`` field per open reservation (``tokens cost``).
        reservations: sorted set — open budget reservation id → expiry in ms (a crashed worker's
            reservation is given back when it lapses).
        pace: hash — limit key → this job's next place in line on it (ms): per-job pacing of
            branches its limits refused, so jobs share a busy key fairly.
        started: hash — branch key → when its latest delivery began running (ms, Redis time): how
            long a running branch has been at it (``fanflow status`` / ``watch``).
        pending: hash — a pipeline's node → how many of its dependencies in the current round
            have not released it yet (0: sent; the record of its last dependency sends it).
    """

    meta: str
    spec: str
    outcomes: str
    rounds: str
    deliveries: str
    leases: str
    owners: str
    queued: str
    sent: str
    cancel: str
    events: str
    result: str
    final: str
    usage: str
    budget: str
    reservations: str
    pace: str
    started: str
    pending: str

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


def active_jobs_key(prefix: str) -> str:
    """Sorted set of the ids of jobs with a round in progress (what the sweeper looks at)."""
    return f"{prefix}:active"


def sweeper_lock_key(prefix: str) -> str:
    """Lock taken by the worker that sweeps for lapsed leases and lost messages this interval."""
    return f"{prefix}:sweeper"
