"""The job store in Redis: job meta, each branch's outcome, progress events and the merged result.

It is the source of truth for a job, independent of Celery's result backend: results stay readable
after the chord's own keys expire, and a retry reads the stored successes. Writes that must be
atomic (begin a branch, record an outcome, open a retry round) are Lua scripts in ``fanflow/lua``;
what they answer, and what the store keeps of a job, are the models of ``fanflow.jobstate``.
"""

from __future__ import annotations

import functools
import json
import threading
import time
from importlib import resources
from typing import Any, cast

import redis

from fanflow.errors import BackendError, JobNotFoundError
from fanflow.jobstate import BranchVerdict, JobMeta, Recorded, StoredJob, SweepReport
from fanflow.keys import JobKeys, active_jobs_key, idempotency_key, jobs_index_key
from fanflow.pipeline.spec import Pipeline
from fanflow.result import JobResult, JobStatus, SubtaskOutcome, Usage
from fanflow.spec import Budget, FanOut

__all__ = [
    "MERGE_MEMBER",
    "BranchVerdict",
    "JobMeta",
    "JobStore",
    "Recorded",
    "StoredJob",
    "SweepReport",
    "nano_usd",
]

EVENTS_MAXLEN = 20_000
#: Connections of a process's job-store pool unless its worker sizes it (``resize_pool``).
DEFAULT_MAX_CONNECTIONS = 64
#: How long a thread waits for a free pooled connection before the store reports an error.
POOL_WAIT_S = 30
#: The member of a job's leases that stands for its merge (branch keys cannot contain ``#``).
MERGE_MEMBER = "#merge"


def nano_usd(dollars: float) -> int:
    """Dollars as an integer count of nano-dollars (Redis counts integers exactly)."""
    return round(dollars * 1e9)


def _usage(fields: dict[str, int]) -> Usage:
    return Usage(
        input_tokens=fields.get("in", 0), output_tokens=fields.get("out", 0),
        cached_tokens=fields.get("cached", 0), cost_usd=fields.get("cost", 0) / 1e9,
        calls=fields.get("calls", 0),
    )  # fmt: skip


@functools.lru_cache(maxsize=4096)
def _job_keys(prefix: str, job_id: str) -> JobKeys:
    return JobKeys.of(prefix, job_id)


def _script(name: str) -> str:
    return resources.files("fanflow.lua").joinpath(f"{name}.lua").read_text(encoding="utf-8")


def _json_list(raw: Any) -> list[str]:
    value = json.loads(raw)
    return [str(item) for item in value] if isinstance(value, list) else []  # cjson encodes [] as {}


class JobStore:
    """Reads and writes jobs in Redis. Thread-safe (one connection pool)."""

    def __init__(self, client: redis.Redis, *, prefix: str = "fanflow", ttl_s: int = 7 * 24 * 3600) -> None:
        self.client = client
        self.prefix = prefix
        self.ttl_s = ttl_s
        self._begin = client.register_script(_script("begin_branch"))
        self._record = client.register_script(_script("record_outcome"))
        self._start_round = client.register_script(_script("start_round"))
        self._begin_merge = client.register_script(_script("begin_merge"))
        self._save_result = client.register_script(_script("save_result"))
        self._renew = client.register_script(_script("renew_leases"))
        self._sweep = client.register_script(_script("sweep_job"))
        self._defer = client.register_script(_script("defer_branch"))
        self._reserve_budget = client.register_script(_script("reserve_budget"))
        self._record_spend = client.register_script(_script("record_spend"))
        self._pace = client.register_script(_script("pace"))
        self._local = threading.local()
        #: Set by a worker whose pool holds a connection per task thread (``resize_pool``).
        self.connection_per_thread = False

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        prefix: str = "fanflow",
        ttl_s: int = 7 * 24 * 3600,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
    ) -> JobStore:
        """A store on the Redis at ``url``.

        Every thread shares one pool of at most ``max_connections`` connections; a thread that finds
        them all busy waits for one (``BlockingConnectionPool``) instead of failing with "Too many
        connections", so a worker with hundreds of threads needs no connection per thread. Workers
        size the pool from their concurrency (``resize_pool``).
        """
        pool = redis.BlockingConnectionPool.from_url(
            url, decode_responses=True, socket_timeout=30, socket_connect_timeout=10,
            max_connections=max_connections, timeout=POOL_WAIT_S, health_check_interval=30,
        )  # fmt: skip
        return cls(redis.Redis(connection_pool=pool), prefix=prefix, ttl_s=ttl_s)

    @property
    def _branch_client(self) -> redis.Redis | None:
        """This thread's own connection for the two scripts every branch runs, if the pool has one
        per thread (else None: the shared pool).

        Checking a connection out of the pool and back in costs more CPU than the script call; a
        worker thread runs one branch at a time, so it keeps one when its worker sized the pool to
        its threads plus a few (``resize_pool(..., per_thread=True)``).
        """
        if not self.connection_per_thread:
            return None
        client: redis.Redis | None = getattr(self._local, "client", None)
        pool = self.client.connection_pool
        if client is None or client.connection_pool is not pool:
            client = self._local.client = redis.Redis(connection_pool=pool, single_connection_client=True)
        return client

    def resize_pool(self, max_connections: int, *, per_thread: bool = False) -> None:
        """Replace the connection pool by one of ``max_connections`` (a worker, before it consumes).

        ``per_thread``: the pool has room for a connection per task thread, which keeps one.
        """
        self.connection_per_thread = per_thread
        old = self.client.connection_pool
        if not isinstance(old, redis.BlockingConnectionPool) or old.max_connections == max_connections:
            return
        pool = redis.BlockingConnectionPool(  # type: ignore[no-untyped-call]
            connection_class=old.connection_class, max_connections=max_connections, timeout=POOL_WAIT_S,
            **old.connection_kwargs,
        )  # fmt: skip
        self.client.connection_pool = pool
        old.disconnect()

    def keys(self, job_id: str) -> JobKeys:
        """The Redis keys of a job (built once per job: every branch's every call asks)."""
        return _job_keys(self.prefix, job_id)

    # --- producer side --------------------------------------------------------------------------

    def claim_idempotency_key(self, key: str, job_id: str) -> str | None:
        """Bind ``key`` to ``job_id``; return the job id already bound to it, if any."""
        name = idempotency_key(self.prefix, key)
        if self.client.set(name, job_id, nx=True, ex=self.ttl_s):
            return None
        existing = self.client.get(name)
        return str(existing) if existing else None

    def create_job(
        self,
        job_id: str,
        spec: FanOut,
        *,
        pipeline: Pipeline | None = None,
        pending: dict[str, int] | None = None,
        batch: int = 0,
    ) -> StoredJob:
        """Persist a new job (status ``pending``, round 0) before its branches are enqueued.

        A pipeline's job (``spec`` the fan-out of its nodes) starts with ``pending``: each node's
        count of dependencies; the nodes with none are the ones sent now. ``batch``: its first round
        is sent in batches of that many branches (``fanflow.batching``).
        """
        keys = self.keys(job_id)
        now = time.time()
        job = StoredJob(spec=spec, created_at=now, pipeline=pipeline)
        name, size = spec.name, len(spec.subtasks)
        sent = [s.key for s in spec.subtasks if not (pending or {}).get(s.key)]
        with self.client.pipeline(transaction=True) as pipe:
            pipe.set(keys.spec, job.model_dump_json(), ex=self.ttl_s)
            pipe.hset(
                keys.meta,
                mapping={
                    "name": name, "status": JobStatus.PENDING.value, "round": 0, "size": size,
                    "total": size, "done": 0, "failed": 0, "created_at": repr(now), "merges": 0,
                    "merged_round": -1, "round_at": int(now * 1000), "batch": batch,
                },
            )  # fmt: skip
            pipe.expire(keys.meta, self.ttl_s)
            for start in range(0, len(sent), 5000):
                pipe.sadd(keys.queued, *sent[start : start + 5000])
            pipe.expire(keys.queued, self.ttl_s)
            if pending:
                pipe.hset(keys.pending, mapping=cast(dict[Any, Any], pending))
                pipe.expire(keys.pending, self.ttl_s)
            pipe.zadd(jobs_index_key(self.prefix), {job_id: now})
            pipe.zadd(active_jobs_key(self.prefix), {job_id: now})
            pipe.xadd(keys.events, {"type": "job", "status": "pending", "round": 0}, maxlen=EVENTS_MAXLEN)
            pipe.expire(keys.events, self.ttl_s)
            self._execute(pipe)
        return job

    def start_round(
        self, job_id: str, new_round: int, branch_keys: list[str], *, pending: dict[str, int] | None = None
    ) -> bool:
        """Open retry round ``new_round`` over ``branch_keys`` if the job is final; False otherwise.

        A pipeline's round gives each node's count of dependencies in the round (``pending``); only
        the nodes with none are sent now.
        """
        keys = self.keys(job_id)
        sent = [key for key in branch_keys if not (pending or {}).get(key)]
        opened = self._start_round(
            keys=[keys.meta, keys.cancel, keys.result, keys.events, keys.queued, keys.sent, keys.pending],
            args=[new_round, EVENTS_MAXLEN, self.ttl_s, json.dumps(branch_keys), json.dumps(pending or {}),
                  *sent],
        )  # fmt: skip
        if opened:
            self.client.zadd(active_jobs_key(self.prefix), {job_id: time.time()})
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
        self,
        job_id: str,
        key: str,
        round_: int,
        *,
        token: str,
        delivery_cap: int,
        max_concurrency: int,
        lease_s: float,
    ) -> BranchVerdict:
        """Decide atomically whether this delivery of a branch runs; take its lease (``begin_branch.lua``)."""
        keys = self.keys(job_id)
        reply = self._begin(
            keys=[keys.meta, keys.rounds, keys.deliveries, keys.cancel, keys.leases, keys.events,
                  keys.owners, keys.queued, keys.started],
            args=[key, round_, delivery_cap, token, max_concurrency, int(lease_s * 1000), EVENTS_MAXLEN,
                  self.ttl_s],
            client=self._branch_client,
        )  # fmt: skip
        reason = str(reply[2]) if len(reply) > 2 else None
        return BranchVerdict(str(reply[0]), int(reply[1]), reason)

    def record_outcome(
        self,
        job_id: str,
        outcome: SubtaskOutcome,
        *,
        cancel_on_failure: bool,
        token: str = "",
        spend: dict[str, Usage] | None = None,
        release: list[str] | None = None,
        stop: list[SubtaskOutcome] | None = None,
    ) -> Recorded:
        """Store a branch's outcome once per (branch, round) and drop its lease; falsy for a duplicate.

        ``spend``: what its calls spent per model, not yet counted in the job's usage — counted with
        the outcome, once (a duplicate delivery's outcome is not written, so not counted).

        A pipeline's node passes ``release`` (the successors a succeeded node lets go, possibly
        none) and ``stop`` (the outcomes of nodes that will not run: skipped, blocked, cancelled),
        written in the same step; the reply names the nodes now ready to send.
        """
        keys = self.keys(job_id)
        error = f"{outcome.key}: {outcome.error.type}: {outcome.error.message}" if outcome.error else ""
        spent: list[str | int] = [len(spend or {})]
        for model, usage in (spend or {}).items():
            spent += [model, usage.input_tokens, usage.output_tokens, usage.cached_tokens,
                      nano_usd(usage.cost_usd), usage.calls]  # fmt: skip
        record_keys = [keys.meta, keys.rounds, keys.outcomes, keys.leases, keys.events, keys.cancel,
                       keys.owners, keys.queued, keys.usage]  # fmt: skip
        if release is not None or stop is not None:
            record_keys += [keys.pending, keys.sent]
            spent += [len(release or []), *(release or []), len(stop or [])]
            for stopped in stop or []:
                spent += [stopped.key, stopped.model_dump_json()]
        reply = self._record(
            keys=record_keys,
            args=[
                outcome.key, outcome.round, outcome.model_dump_json(), outcome.status.value,
                "1" if cancel_on_failure else "0", self.ttl_s, EVENTS_MAXLEN, error[:2000], token, *spent,
            ],
            client=self._branch_client,
        )  # fmt: skip
        return Recorded(bool(int(reply[0])), bool(int(reply[1])), tuple(str(node) for node in reply[2:]))

    def defer_branch(self, job_id: str, key: str, round_: int, *, token: str, countdown_s: float) -> bool:
        """Give back a branch its limits did not admit (``defer_branch.lua``); its message returns later."""
        keys = self.keys(job_id)
        deferred = self._defer(
            keys=[keys.leases, keys.owners, keys.deliveries, keys.queued, keys.sent],
            args=[key, round_, token, int(countdown_s * 1000)],
        )
        return bool(deferred)

    # --- spend and budget ---------------------------------------------------------------------------

    def reserve_budget(
        self, job_id: str, reservation: str, estimate: Usage, budget: Budget, *, lease_s: float
    ) -> int:
        """Reserve one call's estimated spend against the job's budget (``reserve_budget.lua``).

        Returns 1 (reserved), 0 (wait: open reservations of running calls fill the budget for now)
        or -1 (exhausted: the job's cancel flag is now ``budget``).
        """
        keys = self.keys(job_id)
        max_cost = budget.max_cost_usd
        reply = self._reserve_budget(
            keys=[keys.budget, keys.reservations, keys.cancel],
            args=[
                reservation, estimate.total_tokens, nano_usd(estimate.cost_usd),
                -1 if budget.max_tokens is None else budget.max_tokens,
                -1 if max_cost is None else nano_usd(max_cost), int(lease_s * 1000), self.ttl_s,
            ],
            client=self._branch_client,
        )  # fmt: skip
        return int(reply[0])

    def record_spend(
        self, job_id: str, model: str, usage: Usage, *, reservation: str | None = None, key: str = ""
    ) -> None:
        """Count one call's real spend once, per model, and settle its budget reservation."""
        keys = self.keys(job_id)
        self._record_spend(
            keys=[keys.usage, keys.budget, keys.reservations, keys.events],
            args=[
                model, usage.input_tokens, usage.output_tokens, usage.cached_tokens,
                nano_usd(usage.cost_usd), usage.calls, reservation or "", self.ttl_s, EVENTS_MAXLEN, key,
            ],
            client=self._branch_client,
        )  # fmt: skip

    def pace(
        self, job_id: str, key: str, *, refused_wait_s: float | None, spacings: dict[str, int]
    ) -> float | None:
        """The job's place in line on its busy limit keys (``pace.lua``): seconds to wait.

        ``refused_wait_s`` None: a branch's first try — None when the job has no line ahead (try
        now). Otherwise the limits refused the branch for that long: its place after the job's
        branches already in line.
        """
        keys = self.keys(job_id)
        mode = "first" if refused_wait_s is None else "refused"
        pairs = [item for name, spacing in spacings.items() for item in (name, spacing)]
        reply = int(
            self._pace(
                keys=[keys.pace, keys.sent],
                args=[mode, int((refused_wait_s or 0) * 1000), self.ttl_s, key, *pairs],
                client=self._branch_client,
            )
        )
        return None if reply < 0 else reply / 1000

    def start_lines(self, job_id: str, lines_ms: dict[str, int], delays_ms: dict[str, int]) -> None:
        """A job paced at submit: its line on each key starts ``lines_ms`` behind now (Redis time),
        and its delayed branches count as sent at their ETA (the sweeper leaves them alone until then)."""
        if not lines_ms and not delays_ms:
            return
        seconds, micros = self.client.time()
        now_ms = int(seconds) * 1000 + int(micros) // 1000
        keys = self.keys(job_id)
        pipe = self.client.pipeline(transaction=False)
        if lines_ms:
            pipe.hset(keys.pace, mapping={key: now_ms + ms for key, ms in lines_ms.items()})
            pipe.expire(keys.pace, self.ttl_s)
        if delays_ms:
            pipe.hset(keys.sent, mapping={key: now_ms + ms for key, ms in delays_ms.items()})
            pipe.expire(keys.sent, self.ttl_s)
        pipe.execute()

    def usage_by_model(self, job_id: str) -> dict[str, Usage]:
        """What the job's calls spent so far, per model (merge calls included)."""
        raw = cast(dict[str, str], self.client.hgetall(self.keys(job_id).usage))
        fields: dict[str, dict[str, int]] = {}
        for name, value in raw.items():
            model, _, field = name.rpartition("|")
            fields.setdefault(model, {})[field] = int(value)
        return {model: _usage(f) for model, f in sorted(fields.items())}

    def outcome(self, job_id: str, key: str) -> SubtaskOutcome | None:
        """One branch's latest outcome, if recorded."""
        raw = self.client.hget(self.keys(job_id).outcomes, key)
        return SubtaskOutcome.model_validate_json(cast(str, raw)) if raw else None

    def begin_merge(self, job_id: str, round_: int, *, token: str, lease_s: float) -> str:
        """Decide atomically whether this delivery of a merge runs and take the merge lease.

        Returns ``run``, or why not: ``done``, ``running`` (a duplicate), ``stale``, ``missing``.
        """
        keys = self.keys(job_id)
        reply = self._begin_merge(
            keys=[keys.meta, keys.leases, keys.owners], args=[round_, token, int(lease_s * 1000), self.ttl_s]
        )
        return str(reply)

    def renew_leases(self, job_id: str, held: dict[str, str], lease_s: float) -> list[str]:
        """Extend the leases this worker holds on a job (member → token); return the ones it lost."""
        keys = self.keys(job_id)
        args: list[Any] = [int(lease_s * 1000)]
        for member, token in held.items():
            args += [member, token]
        lost = self._renew(keys=[keys.leases, keys.owners], args=args)
        return [str(member) for member in lost]

    def sweep(self, job_id: str, grace_s: float) -> SweepReport:
        """Find what a job needs delivered again (``sweep_job.lua``); lapsed leases are dropped."""
        keys = self.keys(job_id)
        state, round_, lapsed, suspects, merge = self._sweep(
            keys=[keys.meta, keys.leases, keys.owners, keys.queued, keys.sent], args=[int(grace_s * 1000)]
        )
        return SweepReport(
            state=str(state), round=int(round_), lapsed=_json_list(lapsed), suspects=_json_list(suspects),
            merge=str(merge) == "1",
        )  # fmt: skip

    def mark_sent(self, job_id: str, members: list[str]) -> None:
        """Note that the sweeper sent (or found) these branches now, so it waits a grace period again."""
        if members:
            now_ms = int(time.time() * 1000)
            self.client.hset(self.keys(job_id).sent, mapping=dict.fromkeys(members, now_ms))

    def active_jobs(self, limit: int = 10_000) -> list[str]:
        """Ids of the jobs with a round in progress, oldest first."""
        return [str(job_id) for job_id in self.client.zrange(active_jobs_key(self.prefix), 0, limit - 1)]

    def deactivate(self, job_id: str) -> None:
        """Drop a job from the sweeper's list (it is final, or gone)."""
        self.client.zrem(active_jobs_key(self.prefix), job_id)

    def batch_size(self, job_id: str) -> int:
        """How many branches each message of the job's first round carries (0: one message per branch)."""
        return int(cast(str | None, self.client.hget(self.keys(job_id).meta, "batch")) or 0)

    def round_keys(self, job_id: str) -> list[str] | None:
        """The branch keys of the current round, or None when it is the first round (every branch)."""
        raw = self.client.hget(self.keys(job_id).meta, "round_keys")
        return [str(key) for key in json.loads(cast(str, raw))] if raw else None

    def cancel_reason(self, job_id: str) -> str | None:
        """Why the job is being cancelled (``user``, ``failure``), or None."""
        reason = self.client.get(self.keys(job_id).cancel)
        return str(reason) if reason is not None else None

    def outcomes(self, job_id: str) -> dict[str, SubtaskOutcome]:
        """Every branch's latest outcome, by key."""
        raw = cast(dict[str, str], self.client.hgetall(self.keys(job_id).outcomes))
        return {key: SubtaskOutcome.model_validate_json(value) for key, value in raw.items()}

    def started_at(self, job_id: str) -> dict[str, float]:
        """When each branch's latest delivery began running (seconds since the epoch, Redis time)."""
        raw = cast(dict[str, str], self.client.hgetall(self.keys(job_id).started))
        return {key: int(value) / 1000 for key, value in raw.items()}

    def branch_states(self, job_id: str) -> dict[str, str]:
        """Each branch of the current round: ``queued``, ``running``, or its latest outcome's status
        (a pipeline's nodes not sent yet: ``pending``)."""
        keys = self.keys(job_id)
        pipe = self.client.pipeline(transaction=False)
        pipe.get(keys.spec)
        pipe.hgetall(keys.outcomes)
        pipe.zrange(keys.leases, 0, -1)
        pipe.hget(keys.meta, "round")
        pipe.smembers(keys.queued)
        spec_json, outcomes, running, round_, queued = pipe.execute()
        if spec_json is None:
            raise JobNotFoundError(f"no job {job_id!r} (unknown, or its results expired)")
        current = int(round_ or 0)
        stored = json.loads(spec_json)
        # A pipeline's node not sent yet waits for its dependencies: pending, not queued.
        waiting = "pending" if stored.get("pipeline") is not None else "queued"
        states: dict[str, str] = {}
        for key in (subtask["key"] for subtask in stored["spec"]["subtasks"]):
            raw = outcomes.get(key)
            outcome = SubtaskOutcome.model_validate_json(raw) if raw else None
            if key in running:
                states[key] = "running"
            elif outcome is not None and (outcome.round >= current or outcome.succeeded):
                states[key] = outcome.status.value
            else:
                states[key] = "queued" if key in queued else waiting
        return states

    def save_result(self, job_id: str, result: JobResult) -> bool:
        """Store a round's merged result once, finish the job's status and wake every waiter.

        Returns False (and changes nothing) when that round already has its result: a merge
        delivered twice saves once, and ``merges`` in the job meta counts real merges.
        """
        keys = self.keys(job_id)
        try:
            saved = self._save_result(
                keys=[keys.meta, keys.result, keys.final, keys.events, keys.leases, keys.owners],
                args=[result.round, result.model_dump_json(), result.status.value, self.ttl_s,
                      EVENTS_MAXLEN, repr(result.finished_at or time.time())],
            )  # fmt: skip
            if saved:
                with self.client.pipeline(transaction=False) as pipe:
                    for key in keys.all():
                        pipe.expire(key, self.ttl_s)
                    pipe.zrem(active_jobs_key(self.prefix), job_id)
                    pipe.execute()
        except redis.RedisError as exc:
            raise BackendError(f"Redis write failed: {exc}") from exc
        return bool(saved)

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
