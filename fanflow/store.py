"""The job store in Redis: job meta, each branch's outcome, progress events and the merged result.

It is the source of truth for a job, independent of Celery's result backend: results stay readable
after the chord's own keys expire, and a retry reads the stored successes. Writes that must be
atomic (begin a branch, record an outcome, open a retry round) are Lua scripts in ``fanflow/lua``.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from importlib import resources
from typing import Any, cast

import redis
from pydantic import BaseModel, ConfigDict

from fanflow.errors import BackendError, JobNotFoundError
from fanflow.keys import JobKeys, idempotency_key, jobs_index_key
from fanflow.result import JobResult, JobStatus, SubtaskOutcome
from fanflow.spec import FanOut

__all__ = ["BranchVerdict", "JobMeta", "JobStore", "StoredJob"]

EVENTS_MAXLEN = 20_000


def _script(name: str) -> str:
    return resources.files("fanflow.lua").joinpath(f"{name}.lua").read_text(encoding="utf-8")


class StoredJob(BaseModel):
    """What the store keeps of a submitted job: its spec and when it was created."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    spec: FanOut
    created_at: float

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
        )


class JobStore:
    """Reads and writes jobs in Redis. Thread-safe (one connection pool)."""

    def __init__(self, client: redis.Redis, *, prefix: str = "fanflow", ttl_s: int = 7 * 24 * 3600) -> None:
        self.client = client
        self.prefix = prefix
        self.ttl_s = ttl_s
        self._begin = client.register_script(_script("begin_branch"))
        self._record = client.register_script(_script("record_outcome"))
        self._start_round = client.register_script(_script("start_round"))
        self._local = threading.local()

    @property
    def _branch_client(self) -> redis.Redis:
        """This thread's own connection, for the two commands every branch sends.

        Taking a connection from the shared pool and giving it back costs more CPU than the command
        itself; a worker thread runs one branch at a time, so it can keep one connection.
        """
        client: redis.Redis | None = getattr(self._local, "client", None)
        if client is None:
            client = self._local.client = redis.Redis(
                connection_pool=self.client.connection_pool, single_connection_client=True
            )
        return client

    @classmethod
    def from_url(cls, url: str, *, prefix: str = "fanflow", ttl_s: int = 7 * 24 * 3600) -> JobStore:
        """A store on the Redis at ``url``."""
        # Blocking reads (wait, watch) block for at most a few seconds, well inside this timeout.
        client = redis.Redis.from_url(
            url, decode_responses=True, socket_timeout=30, socket_connect_timeout=10
        )
        return cls(client, prefix=prefix, ttl_s=ttl_s)

    def keys(self, job_id: str) -> JobKeys:
        """The Redis keys of a job."""
        return JobKeys.of(self.prefix, job_id)

    # --- producer side --------------------------------------------------------------------------

    def claim_idempotency_key(self, key: str, job_id: str) -> str | None:
        """Bind ``key`` to ``job_id``; return the job id already bound to it, if any."""
        name = idempotency_key(self.prefix, key)
        if self.client.set(name, job_id, nx=True, ex=self.ttl_s):
            return None
        existing = self.client.get(name)
        return str(existing) if existing else None

    def create_job(self, job_id: str, spec: FanOut) -> StoredJob:
        """Persist a new job (status ``pending``, round 0) before its branches are enqueued."""
        keys = self.keys(job_id)
        now = time.time()
        job = StoredJob(spec=spec, created_at=now)
        name, size = spec.name, len(spec.subtasks)
        with self.client.pipeline(transaction=True) as pipe:
            pipe.set(keys.spec, job.model_dump_json(), ex=self.ttl_s)
            pipe.hset(
                keys.meta,
                mapping={
                    "name": name, "status": JobStatus.PENDING.value, "round": 0, "size": size,
                    "total": size, "done": 0, "failed": 0, "created_at": repr(now), "merges": 0,
                },
            )  # fmt: skip
            pipe.expire(keys.meta, self.ttl_s)
            pipe.zadd(jobs_index_key(self.prefix), {job_id: now})
            pipe.xadd(keys.events, {"type": "job", "status": "pending", "round": 0}, maxlen=EVENTS_MAXLEN)
            pipe.expire(keys.events, self.ttl_s)
            self._execute(pipe)
        return job

    def start_round(self, job_id: str, new_round: int, size: int) -> bool:
        """Open retry round ``new_round`` over ``size`` branches if the job is final; False otherwise."""
        keys = self.keys(job_id)
        opened = self._start_round(
            keys=[keys.meta, keys.cancel, keys.result, keys.events], args=[new_round, size, EVENTS_MAXLEN]
        )
        return bool(opened)

    def cancel(self, job_id: str, reason: str = "user") -> bool:
        """Raise the job's cancel flag; False if it was already raised."""
        keys = self.keys(job_id)
        self.meta(job_id)  # raises JobNotFoundError for an unknown job
        return bool(self.client.set(keys.cancel, reason, nx=True, ex=self.ttl_s))

    # --- worker side ----------------------------------------------------------------------------

    def load_job(self, job_id: str) -> StoredJob:
        """The job's spec and creation time, as stored at submit.

        Raises:
            JobNotFoundError: unknown or expired job.
        """
        raw = self.client.get(self.keys(job_id).spec)
        if raw is None:
            raise JobNotFoundError(f"no job {job_id!r} (unknown, or its results expired)")
        return StoredJob.model_validate_json(raw)

    def begin_branch(
        self, job_id: str, key: str, round_: int, *, delivery_cap: int, max_concurrency: int, lease_s: float
    ) -> BranchVerdict:
        """Decide atomically whether this delivery of a branch should run (see ``begin_branch.lua``)."""
        keys = self.keys(job_id)
        reply = self._begin(
            keys=[keys.meta, keys.rounds, keys.deliveries, keys.cancel, keys.running, keys.events],
            client=self._branch_client,
            args=[
                key,
                round_,
                delivery_cap,
                time.time(),
                max_concurrency,
                lease_s,
                EVENTS_MAXLEN,
                self.ttl_s,
            ],
        )
        reason = str(reply[2]) if len(reply) > 2 else None
        return BranchVerdict(str(reply[0]), int(reply[1]), reason)

    def record_outcome(self, job_id: str, outcome: SubtaskOutcome, *, cancel_on_failure: bool) -> bool:
        """Store a branch's outcome once per (branch, round); False for a duplicate."""
        keys = self.keys(job_id)
        error = f"{outcome.key}: {outcome.error.type}: {outcome.error.message}" if outcome.error else ""
        recorded = self._record(
            keys=[keys.meta, keys.rounds, keys.outcomes, keys.running, keys.events, keys.cancel],
            client=self._branch_client,
            args=[
                outcome.key, outcome.round, outcome.model_dump_json(), outcome.status.value,
                "1" if cancel_on_failure else "0", self.ttl_s, EVENTS_MAXLEN, error[:2000],
            ],
        )  # fmt: skip
        return bool(recorded)

    def cancel_reason(self, job_id: str) -> str | None:
        """Why the job is being cancelled (``user``, ``failure``), or None."""
        reason = self.client.get(self.keys(job_id).cancel)
        return str(reason) if reason is not None else None

    def outcomes(self, job_id: str) -> dict[str, SubtaskOutcome]:
        """Every branch's latest outcome, by key."""
        raw = cast(dict[str, str], self.client.hgetall(self.keys(job_id).outcomes))
        return {key: SubtaskOutcome.model_validate_json(value) for key, value in raw.items()}

    def save_result(self, job_id: str, result: JobResult) -> None:
        """Store the merged result, finish the job's status and wake every waiter."""
        keys = self.keys(job_id)
        with self.client.pipeline(transaction=True) as pipe:
            pipe.set(keys.result, result.model_dump_json(), ex=self.ttl_s)
            pipe.hset(keys.meta, mapping={"status": result.status.value, "finished_at": repr(time.time())})
            pipe.hincrby(keys.meta, "merges", 1)
            pipe.xadd(keys.final, {"status": result.status.value, "round": result.round}, maxlen=100)
            pipe.xadd(keys.events, {"type": "job", "status": result.status.value, "round": result.round},
                      maxlen=EVENTS_MAXLEN)  # fmt: skip
            for key in keys.all():
                pipe.expire(key, self.ttl_s)
            self._execute(pipe)

    # --- readers --------------------------------------------------------------------------------

    def meta(self, job_id: str) -> JobMeta:
        """The job's live state.

        Raises:
            JobNotFoundError: unknown or expired job.
        """
        data = cast(dict[str, str], self.client.hgetall(self.keys(job_id).meta))
        if not data:
            raise JobNotFoundError(f"no job {job_id!r} (unknown, or its results expired)")
        return JobMeta.from_hash(job_id, data)

    def result(self, job_id: str) -> JobResult | None:
        """The merged result, or None while the job (or its retry round) runs."""
        raw = self.client.get(self.keys(job_id).result)
        return JobResult.model_validate_json(raw) if raw else None

    def wait_final(self, job_id: str, after: str, block_ms: int) -> str | None:
        """Block until a merge finishes after stream id ``after``; return its id, or None on timeout."""
        reply: Any = self.client.xread({self.keys(job_id).final: after}, count=1, block=max(1, block_ms))
        if not reply:
            return None
        return str(reply[0][1][-1][0])

    def events(
        self, job_id: str, after: str, *, block_ms: int | None = None
    ) -> list[tuple[str, dict[str, str]]]:
        """Progress events after stream id ``after`` (blocking up to ``block_ms`` when given)."""
        reply: Any = self.client.xread({self.keys(job_id).events: after}, count=1000, block=block_ms)
        if not reply:
            return []
        return [(str(entry_id), dict(fields)) for entry_id, fields in reply[0][1]]

    def recent_jobs(self, limit: int = 20) -> list[str]:
        """Ids of the most recently created jobs, newest first."""
        return [str(job_id) for job_id in self.client.zrevrange(jobs_index_key(self.prefix), 0, limit - 1)]

    def ping(self) -> None:
        """Check that Redis answers.

        Raises:
            BackendError: it does not.
        """
        try:
            self.client.ping()
        except redis.RedisError as exc:
            raise BackendError(f"the job store's Redis did not answer: {exc}") from exc

    @staticmethod
    def _execute(pipe: Any) -> None:
        try:
            pipe.execute()
        except redis.RedisError as exc:
            raise BackendError(f"Redis write failed: {exc}") from exc
