"""The producer's API: ``Client.submit(spec) -> JobHandle``, then ``wait``, ``retry_failed``, ``cancel``."""

from __future__ import annotations

import datetime as dt
import functools
import time
import uuid
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any, TypeVar

from celery import Celery

from fanflow.app import create_app, limiter_of, store_of
from fanflow.batching import batch_plan
from fanflow.canvas import publish_round, republish_branches
from fanflow.config import Settings
from fanflow.errors import BackendError, ConfigError, FanflowError, JobTimeoutError, SpecError
from fanflow.executors import EXECUTABLE_KINDS
from fanflow.executors.agent import check_agent_templates
from fanflow.executors.llm import check_call_templates, provider
from fanflow.executors.llm.providers import declare_job_providers
from fanflow.imports import import_object
from fanflow.keys import active_jobs_key, idempotency_key, jobs_index_key
from fanflow.outage import OutageGuard, describe_exception, redis_endpoint
from fanflow.pacing import SubmitPacing, plan_pacing
from fanflow.pipeline.graph import Graph
from fanflow.pipeline.loading import is_pipeline_data, load_job_file, pipeline_from_data
from fanflow.pipeline.rungraph import RunGraph
from fanflow.pipeline.runtime import node_fanout, publish_nodes
from fanflow.pipeline.seed_format import LoadedGraph
from fanflow.pipeline.spec import Pipeline
from fanflow.ratelimit import Limit
from fanflow.result import JobResult, JobStatus, OutcomeStatus, Usage
from fanflow.spec import (
    AgentRun,
    CustomMerge,
    FanOut,
    LLMCall,
    PyCall,
    SynthesizeMerge,
    TaskSpec,
    validate_fanout,
)
from fanflow.store import JobMeta

__all__ = ["Client", "JobHandle"]

T = TypeVar("T")


class Client:
    """Submits fan-outs and finds jobs again. Thread-safe; make one per process.

    Every call that reaches Redis or the broker rides out an outage of up to ``outage_grace_s``
    (``FANFLOW_OUTAGE_GRACE_S``, default 10 s) and then raises one ``BackendError`` naming what was
    unreachable; a wrong password or an unknown job fails at once.

    Args:
        app: a Celery app from ``fanflow.app.create_app`` (it knows the job store).
        check_imports: import every ``python`` function and custom merge at submit time, so a typo
            fails before anything is enqueued. Turn off when producers lack the workers' code.
    """

    def __init__(self, app: Celery, *, check_imports: bool = True) -> None:
        self.app = app
        self.store = store_of(app)
        self.settings: Settings = app.fanflow_settings  # type: ignore[attr-defined]
        self.check_imports = check_imports
        settings = self.settings
        store_at = redis_endpoint(settings.store_url_value)
        broker_at = redis_endpoint(settings.broker_url_value)
        # The variable the store's URL comes from (the broker's when they are the same).
        store_variable = (
            "FANFLOW_BROKER_URL" if settings.store_url_value == settings.broker_url_value
            else "FANFLOW_STORE_URL" if settings.store_url is not None
            else "FANFLOW_RESULT_BACKEND"
        )  # fmt: skip
        wait_longer = "or raise FANFLOW_OUTAGE_GRACE_S to wait longer"
        #: Where the job store and the broker are, and what to check, for errors (never a password).
        self.store_where = f"Redis at {store_at}"
        self.store_hint = f"check that Redis is running and that {store_variable} points at it, {wait_longer}"
        self.broker_where = f"the broker at {broker_at}"
        self.broker_hint = f"check that it is running and that FANFLOW_BROKER_URL points at it, {wait_longer}"
        if broker_at == store_at:
            self.broker_where, self.broker_hint = self.store_where, self.store_hint
        #: Retries the calls of this client and its handles through a short outage.
        self.outage = OutageGuard(settings.outage_grace_s, self.store_where, hint=self.store_hint)

    def _broker_call(self, fn: Callable[[], T], what: str, give_up: Callable[[], str] | None = None) -> T:
        """``fn()`` (a publish) through a short outage of the broker (and of the backend it writes)."""
        return self.outage.call(fn, what, where=self.broker_where, hint=self.broker_hint, give_up=give_up)

    @classmethod
    def from_env(cls, **kwargs: Any) -> Client:
        """A client configured from ``FANFLOW_*`` environment variables."""
        return cls.from_settings(Settings(), **kwargs)

    @classmethod
    def from_settings(cls, settings: Settings, **kwargs: Any) -> Client:
        """A client for ``settings``."""
        return cls(create_app(settings), **kwargs)

    def close(self) -> None:
        """Close this client's job-store connections (they reopen on use).

        The broker's connections stay: kombu pools them per broker URL for the whole process, so
        closing them here would break every other client of the same broker.
        """
        self.store.client.connection_pool.disconnect()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def submit(self, spec: FanOut | Pipeline | LoadedGraph | dict[str, Any] | str | Path) -> JobHandle:
        """Validate, persist and enqueue a fan-out or a pipeline; return at once.

        ``spec`` is a ``FanOut``, a ``Pipeline`` (or a ``LoadedGraph``), a dict of either, or the path
        of a YAML/JSON file of either (a pipeline in fanflow's format or the seed tutorial's). A
        pipeline's nodes with no dependency are sent at once, every other node when its own
        dependencies are done (``fanflow.pipeline.runtime``). With an ``idempotency_key`` already
        used, the existing job's handle is returned and nothing is enqueued.

        Raises:
            SpecError: the spec is invalid (naming the field); nothing was enqueued.
            BackendError: Redis or the broker stayed unreachable for the outage grace, or the branches
                could not be enqueued; what the submit wrote is withdrawn (the message says if not).
        """
        fanout, pipeline, pacing = self._prepare(_job_spec(spec))
        pending, roots = _pipeline_start(pipeline)
        batches = (
            None if pipeline else batch_plan(fanout, self.settings.batch_size, paced=bool(pacing.delays_ms))
        )
        job_id = uuid.uuid4().hex
        etas = pacing.etas(dt.datetime.now(dt.UTC)) if pacing.delays_ms else None
        idempotency = fanout.idempotency_key

        def claim() -> str | None:
            assert idempotency is not None
            existing = self.store.claim_idempotency_key(idempotency, job_id)
            # A retried claim finds its own earlier SET whose reply was lost: the key is ours.
            return None if existing == job_id else existing

        attempts = 0

        def publish() -> None:
            nonlocal attempts
            attempts += 1
            if roots is not None:  # the same task ids again: a node's lease makes it run once
                publish_nodes(self.app, job_id, fanout, 0, roots)
            elif attempts == 1:
                publish_round(self.app, job_id, fanout, 0, etas=etas, batches=batches)
            else:  # the chord size is set: setting it again could let a fired chord fire twice
                keys = [s.key for s in fanout.subtasks]
                republish_branches(self.app, job_id, fanout, 0, None, keys, batches)

        withdrawn: bool | None = None
        created = False

        def withdraw() -> str:
            nonlocal withdrawn
            withdrawn = self._withdraw(job_id, idempotency)
            if withdrawn or not created:
                return "nothing was submitted"
            return (
                f"job {job_id} may be left half-submitted: once Redis answers, cancel it "
                f"(`fanflow cancel {job_id}`)"
            )

        # Each step is retried through an outage: the claim and create_job are idempotent for one
        # job id, and publishing a round again sends the same task ids, which its chord counts once.
        try:
            if idempotency is not None:
                what = f"submitting job {job_id} (idempotency key)"
                existing = self.outage.call(claim, what, give_up=withdraw)
                if existing is not None:
                    return JobHandle(self, existing)
            create = functools.partial(
                self.store.create_job,
                job_id,
                fanout,
                pipeline=pipeline,
                pending=pending,
                batch=self.settings.batch_size if batches else 0,
            )
            self.outage.call(create, f"submitting job {job_id}", give_up=withdraw)
            created = True
            if pacing.delays_ms:
                lines = functools.partial(self.store.start_lines, job_id, pacing.lines_ms, pacing.delays_ms)
                self.outage.call(lines, f"submitting job {job_id}", give_up=withdraw)
            self._broker_call(publish, f"enqueuing job {job_id}", give_up=withdraw)
        except Exception as exc:
            if withdrawn is not None:  # an outage: the BackendError says it all
                raise
            note = withdraw()
            raise BackendError(f"could not submit job {job_id}: {describe_exception(exc)}; {note}") from exc
        return JobHandle(self, job_id)

    def _prepare(self, job: FanOut | Pipeline) -> tuple[FanOut, Pipeline | None, SubmitPacing]:
        """Check a job for this deployment: its fan-out (a pipeline's: of its nodes), the pipeline,
        and the fan-out's pacing (a pipeline's nodes are paced as they run)."""
        if isinstance(job, Pipeline):
            return self.check_pipeline(job), job, SubmitPacing()
        self.check(job)
        return job, None, self._pacing(job)

    def _pacing(self, fanout: FanOut) -> SubmitPacing:
        """Places in line for a job whose branches consume request-limited keys (``fanflow.pacing``)."""
        settings: Settings = self.app.fanflow_settings  # type: ignore[attr-defined]
        limiter = limiter_of(self.app)

        def read(key: str) -> Limit | None:
            return self.outage.call(lambda: limiter.get_limit(key), "reading the shared limits")

        return plan_pacing(
            fanout, read, in_slot_ms=int(settings.limit_wait_in_slot_s * 1000),
            max_delay_ms=int(settings.visibility_timeout_s * 1000 / 2),
        )  # fmt: skip

    def _withdraw(self, job_id: str, idempotency: str | None) -> bool:
        """Delete whatever a failed submit of ``job_id`` wrote, in one transaction; False if Redis refused.

        Branch messages that did reach the broker find no job and do not run. One attempt: the
        outage grace is spent by then.
        """
        # (A JobStore method would be the better owner of this; it names the store's own keys.)
        store = self.store
        try:
            with store.client.pipeline(transaction=True) as pipe:
                pipe.delete(*store.keys(job_id).all())
                pipe.zrem(jobs_index_key(store.prefix), job_id)
                pipe.zrem(active_jobs_key(store.prefix), job_id)
                pipe.execute()
                if idempotency is not None:
                    name = idempotency_key(store.prefix, idempotency)
                    if store.client.get(name) == job_id:
                        store.client.delete(name)
        except Exception:  # noqa: BLE001 - the caller reports the failure that made it withdraw
            return False
        return True

    def check(self, spec: FanOut) -> None:
        """Checks that need this deployment (not just the spec): executors and imports.

        Raises:
            SpecError: naming the field.
        """
        imported: set[str] = set()  # one import check per distinct function, not per branch
        for index, subtask in enumerate(spec.subtasks):
            names = {"context", "key", *subtask.vars}
            self._check_task(subtask.run, names, f"subtasks.{index}.run", imported)
        if isinstance(spec.merge, SynthesizeMerge):
            _check_model_call(spec.merge.run, {"context", "results", "flagged"}, "merge.run")
        if isinstance(spec.merge, CustomMerge):
            self._check_import(spec.merge.function, "merge.function")

    def check_pipeline(self, pipeline: Pipeline) -> FanOut:
        """``check`` for a pipeline's nodes (their templates see their inputs); its run nodes' fan-out.

        Raises:
            SpecError: naming the field.
        """
        declare_job_providers(pipeline.providers)
        graph = Graph(pipeline)
        ids = {node.id for node in pipeline.nodes}
        imported: set[str] = set()
        for index, node in enumerate(pipeline.nodes):
            names = graph.template_names(node.id)
            if node.run is not None:
                self._check_task(node.run, names, f"nodes.{index}.run", imported)
                continue
            fanout, where = node.fanout, f"nodes.{index}.fanout"
            assert fanout is not None
            for name in ("max_concurrency", "budget", "deadline_s", "idempotency_key"):
                if getattr(fanout, name) is not None:
                    raise SpecError(f"{where}.{name}: set it on the pipeline, not on a fan-out node",
                                    field=f"{where}.{name}")  # fmt: skip
            if isinstance(fanout.merge, SynthesizeMerge):
                raise SpecError(
                    f"{where}.merge: a fan-out node cannot synthesize; follow it with an llm node whose "
                    "prompt uses {results}", field=f"{where}.merge",
                )  # fmt: skip
            if isinstance(fanout.merge, CustomMerge):
                self._check_import(fanout.merge.function, f"{where}.merge.function")
            for number, subtask in enumerate(fanout.subtasks):
                branch, at = f"{node.id}.{subtask.key}", f"{where}.subtasks.{number}"
                if branch in ids:
                    message = f"{at}.key: its branch {branch!r} is also a node id; rename one of them"
                    raise SpecError(message, field=f"{at}.key")
                self._check_task(subtask.run, {*names, *subtask.vars}, f"{at}.run", imported)
        return node_fanout(pipeline)

    def _check_task(self, run: TaskSpec, names: Collection[str], where: str, imported: set[str]) -> None:
        """One task: executable here, its function importable (once per function), its templates filled."""
        if run.kind not in EXECUTABLE_KINDS:
            raise SpecError(
                f"{where}.kind: {run.kind!r} specs validate but this version of fanflow cannot execute them "
                f"yet (executable: {', '.join(sorted(EXECUTABLE_KINDS))})", field=f"{where}.kind",
            )  # fmt: skip
        if isinstance(run, PyCall) and run.function not in imported:
            self._check_import(run.function, f"{where}.function")
            imported.add(run.function)
        elif isinstance(run, LLMCall):
            _check_model_call(run, names, where)
        elif isinstance(run, AgentRun):
            check_agent_templates(run, names, field=where)

    def _check_import(self, path: str, field: str) -> None:
        if not self.check_imports:
            return
        try:
            target = import_object(path)
        except ImportError as exc:
            raise SpecError(f"{field}: {exc}", field=field) from None
        if not callable(target):
            raise SpecError(f"{field}: {path!r} is not callable", field=field)

    def get(self, job_id: str) -> JobHandle:
        """A handle on an existing job (from any process).

        Raises:
            JobNotFoundError: unknown or expired job.
            BackendError: Redis stayed unreachable for the outage grace.
        """
        self.outage.call(lambda: self.store.meta(job_id), f"job {job_id}: reading it")
        return JobHandle(self, job_id)


def _pipeline_start(pipeline: Pipeline | None) -> tuple[dict[str, int] | None, list[str] | None]:
    """A pipeline's count of dependencies per run node, and the nodes sent at once (None, None: a fan-out)."""
    if pipeline is None:
        return None, None
    graph = RunGraph(pipeline)
    return graph.pending_counts(graph.nodes), graph.roots()


def _job_spec(spec: FanOut | Pipeline | LoadedGraph | dict[str, Any] | str | Path) -> FanOut | Pipeline:
    """What ``Client.submit`` was given, validated: a fan-out or a pipeline.

    Raises:
        SpecError: naming the field (and the file).
    """
    if isinstance(spec, (FanOut, Pipeline)):
        return spec
    if isinstance(spec, LoadedGraph):
        return spec.pipeline
    if isinstance(spec, (str, Path)):
        return load_job_file(spec)
    if is_pipeline_data(spec):
        return pipeline_from_data(spec)
    return validate_fanout(spec)


def _check_model_call(call: LLMCall, names: Collection[str], where: str) -> None:
    """Its provider is known here and every ``{name}`` in its templates will be filled in."""
    try:
        provider(call.model.partition(":")[0])
    except ConfigError as exc:
        raise SpecError(f"{where}.model: {exc}", field=f"{where}.model") from None
    check_call_templates(call, names, field=where)


class JobHandle:
    """A submitted job: watch it, wait for it, retry its failed branches, cancel it."""

    def __init__(self, client: Client, job_id: str) -> None:
        self.client = client
        self.job_id = job_id

    def __repr__(self) -> str:
        return f"JobHandle({self.job_id!r})"

    def _call(self, fn: Callable[[], T], what: str, *, until: float | None = None) -> T:
        """``fn()`` through a short Redis outage (the client's grace), else one-line BackendError."""
        return self.client.outage.call(fn, f"job {self.job_id}: {what}", until=until)

    def _meta_and_result(self) -> tuple[JobMeta, JobResult | None]:
        """One read of the job's state and, if it (and its latest retry round) finished, its result."""
        store = self.client.store
        meta = store.meta(self.job_id)
        if not meta.status.is_final:
            return meta, None
        result = store.result(self.job_id)
        return meta, result if result is not None and result.round >= meta.round else None

    def progress(self) -> JobMeta:
        """Live state: status, round, branches done / failed of the current round.

        Raises:
            JobNotFoundError: unknown or expired job.
            BackendError: Redis stayed unreachable for the outage grace.
        """
        return self._call(lambda: self.client.store.meta(self.job_id), "reading its progress")

    def usage(self) -> dict[str, Usage]:
        """What the job's calls spent so far, per model (merge calls included; raises like ``progress``)."""
        return self._call(lambda: self.client.store.usage_by_model(self.job_id), "reading its usage")

    def branches(self) -> dict[str, str]:
        """Each branch's state now: ``queued``, ``running`` or its outcome's status (raises like
        ``progress``)."""
        return self._call(lambda: self.client.store.branch_states(self.job_id), "reading its branches")

    def pipeline(self) -> Pipeline | None:
        """The pipeline the job runs, or None for a fan-out (raises like ``progress``)."""
        return self._call(lambda: self.client.store.load_job(self.job_id).pipeline, "reading its spec")

    def status(self) -> JobStatus:
        """The job's status now (raises like ``progress``)."""
        return self.progress().status

    def result(self) -> JobResult | None:
        """The result if the job (and its latest retry round) has finished, else None.

        Raises:
            BackendError: Redis stayed unreachable for the outage grace.
        """
        return self._call(self._meta_and_result, "reading its result")[1]

    def wait(self, timeout: float | None = None) -> JobResult:
        """Block until the job finishes and return its result (does not raise for a failed job).

        A Redis outage shorter than the client's grace is ridden out; a longer one raises (also
        with ``timeout=None``: waiting never hangs on a Redis that is gone).

        Raises:
            JobTimeoutError: ``timeout`` seconds passed first.
            BackendError: Redis stayed unreachable for the outage grace (or until ``timeout``).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        store = self.client.store
        last = "0-0"
        while True:
            result = self._call(self._meta_and_result, "waiting for it", until=deadline)[1]
            if result is not None:
                return result
            remaining = 5.0 if deadline is None else min(5.0, deadline - time.monotonic())
            if remaining <= 0:
                raise JobTimeoutError(f"job {self.job_id} did not finish within {timeout}s")
            read = functools.partial(store.wait_final, self.job_id, last, int(remaining * 1000))
            seen = self._call(read, "waiting for it", until=deadline)
            if seen is not None:
                last = seen

    def cancel(self) -> bool:
        """Cancel the job: branches not yet started are cancelled, running ones stop at the next check.

        Returns False if it was already being cancelled.

        Raises:
            JobNotFoundError: unknown or expired job.
            BackendError: Redis stayed unreachable for the outage grace.
        """
        return self._call(lambda: self.client.store.cancel(self.job_id, "user"), "cancelling it")

    def retry_failed(self) -> JobHandle:
        """Re-run only the failed and cancelled branches (a new small chord), then merge again.

        For a pipeline: only its failed, cancelled and skipped nodes, each when its dependencies in
        the retry are done; the others' stored outputs feed them.

        Raises:
            FanflowError: the job has not finished, or another retry started first.
            BackendError: Redis or the broker stayed unreachable for the outage grace.
        """
        store = self.client.store
        meta, result = self._call(self._meta_and_result, "reading its result")
        if result is None:
            raise FanflowError(f"job {self.job_id} has not finished; wait for it before retrying")
        # A pipeline's blocked nodes stay blocked: their guard said no, and that is not a failure.
        keys = [o.key for o in result.outcomes if not o.succeeded and o.status is not OutcomeStatus.BLOCKED]
        if not keys:
            return self
        job = self._call(lambda: store.load_job(self.job_id), "reading its spec")
        new_round = meta.round + 1
        tries = 0
        pending = None
        if job.pipeline is not None:  # and what waits for them (a fan-out node merges again)
            graph = RunGraph(job.pipeline)
            keys = graph.closure(keys)
            pending = graph.pending_counts(keys)

        def open_round() -> bool:
            nonlocal tries
            tries += 1
            if store.start_round(self.job_id, new_round, keys, pending=pending):
                return True
            # A try that failed in an outage may have opened the round before its reply was lost.
            now = store.meta(self.job_id) if tries > 1 else None
            return now is not None and now.round == new_round and not now.status.is_final

        def publish() -> None:
            if pending is not None:
                ready = [key for key in keys if not pending[key]]
                publish_nodes(self.client.app, self.job_id, job.spec, new_round, ready)
            else:
                publish_round(self.client.app, self.job_id, job.spec, new_round, keys)

        if not self._call(open_round, f"opening retry round {new_round}"):
            raise FanflowError(f"job {self.job_id} is already being retried")
        try:
            # Publishing the round again sends the same task ids, which its chord counts once.
            self.client._broker_call(publish, f"job {self.job_id}: enqueuing retry round {new_round}")
        except BackendError as exc:
            raise BackendError(
                f"{exc}; retry round {new_round} is open but not all of its branches may be enqueued: "
                f"check `fanflow status {self.job_id}` once Redis answers"
            ) from exc
        return self
