"""The producer's API: ``Client.submit(spec) -> JobHandle``, then ``wait``, ``retry_failed``, ``cancel``."""

from __future__ import annotations

import contextlib
import time
import uuid
from pathlib import Path
from typing import Any

from celery import Celery

from fanflow.app import create_app, store_of
from fanflow.canvas import build_fanout_chord
from fanflow.config import Settings
from fanflow.errors import BackendError, FanflowError, JobTimeoutError, SpecError
from fanflow.executors import EXECUTABLE_KINDS
from fanflow.imports import import_object
from fanflow.result import ErrorInfo, JobResult, JobStatus
from fanflow.spec import CustomMerge, FanOut, PyCall, SynthesizeMerge, load_spec, validate_fanout
from fanflow.store import JobMeta

__all__ = ["Client", "JobHandle"]


class Client:
    """Submits fan-outs and finds jobs again. Thread-safe; make one per process.

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

    @classmethod
    def from_env(cls, **kwargs: Any) -> Client:
        """A client configured from ``FANFLOW_*`` environment variables."""
        return cls.from_settings(Settings(), **kwargs)

    @classmethod
    def from_settings(cls, settings: Settings, **kwargs: Any) -> Client:
        """A client for ``settings``."""
        return cls(create_app(settings), **kwargs)

    def submit(self, spec: FanOut | dict[str, Any] | str | Path) -> JobHandle:
        """Validate, persist and enqueue a fan-out; return at once.

        ``spec`` is a ``FanOut``, a dict, or the path of a YAML/JSON spec file. With an
        ``idempotency_key`` already used, the existing job's handle is returned and nothing is enqueued.

        Raises:
            SpecError: the spec is invalid (naming the field); nothing was enqueued.
            BackendError: Redis or the broker is unreachable.
        """
        fanout = load_spec(spec) if isinstance(spec, (str, Path)) else validate_fanout(spec)
        self.check(fanout)
        job_id = uuid.uuid4().hex
        if fanout.idempotency_key is not None:
            existing = self.store.claim_idempotency_key(fanout.idempotency_key, job_id)
            if existing is not None:
                return JobHandle(self, existing)
        self.store.create_job(job_id, fanout)
        try:
            build_fanout_chord(self.app, job_id, fanout, 0).apply_async()
        except Exception as exc:
            self._fail_unsent(job_id, fanout, exc)
            raise BackendError(f"could not enqueue job {job_id}: {exc}") from exc
        return JobHandle(self, job_id)

    def check(self, spec: FanOut) -> None:
        """Checks that need this deployment (not just the spec): executors, imports, timeouts.

        Raises:
            SpecError: naming the field.
        """
        limit = self.settings.visibility_timeout_s
        for index, subtask in enumerate(spec.subtasks):
            where = f"subtasks.{index}"
            if subtask.run.kind not in EXECUTABLE_KINDS:
                raise SpecError(
                    f"{where}.run.kind: {subtask.run.kind!r} specs validate but this version of fanflow "
                    f"cannot execute them yet (executable: {', '.join(sorted(EXECUTABLE_KINDS))})",
                    field=f"{where}.run.kind",
                )
            if isinstance(subtask.run, PyCall):
                self._check_import(subtask.run.function, f"{where}.run.function")
            if subtask.timeout_s is not None and subtask.timeout_s >= limit:
                raise SpecError(
                    f"{where}.timeout_s: {subtask.timeout_s}s is not below the visibility timeout "
                    f"({limit}s); "
                    "raise FANFLOW_VISIBILITY_TIMEOUT_S or the branch would be delivered twice",
                    field=f"{where}.timeout_s",
                )
        if isinstance(spec.merge, SynthesizeMerge):
            raise SpecError(
                "merge.strategy: 'synthesize' validates but needs the llm executor, which this version lacks",
                field="merge.strategy",
            )
        if isinstance(spec.merge, CustomMerge):
            self._check_import(spec.merge.function, "merge.function")

    def _check_import(self, path: str, field: str) -> None:
        if not self.check_imports:
            return
        try:
            target = import_object(path)
        except ImportError as exc:
            raise SpecError(f"{field}: {exc}", field=field) from None
        if not callable(target):
            raise SpecError(f"{field}: {path!r} is not callable", field=field)

    def _fail_unsent(self, job_id: str, spec: FanOut, exc: Exception) -> None:
        with contextlib.suppress(FanflowError):  # the store is down too; the caller gets the BackendError
            self.store.save_result(
                job_id,
                JobResult(
                    job_id=job_id, name=spec.name, status=JobStatus.FAILED, outcomes=[],
                    error=ErrorInfo(type="EnqueueError", message=f"branches could not be enqueued: {exc}"),
                ),
            )  # fmt: skip

    def get(self, job_id: str) -> JobHandle:
        """A handle on an existing job (from any process).

        Raises:
            JobNotFoundError: unknown or expired job.
        """
        self.store.meta(job_id)
        return JobHandle(self, job_id)


class JobHandle:
    """A submitted job: watch it, wait for it, retry its failed branches, cancel it."""

    def __init__(self, client: Client, job_id: str) -> None:
        self.client = client
        self.job_id = job_id

    def __repr__(self) -> str:
        return f"JobHandle({self.job_id!r})"

    def progress(self) -> JobMeta:
        """Live state: status, round, branches done / failed of the current round."""
        return self.client.store.meta(self.job_id)

    def status(self) -> JobStatus:
        """The job's status now."""
        return self.progress().status

    def result(self) -> JobResult | None:
        """The result if the job (and its latest retry round) has finished, else None."""
        meta = self.progress()
        if not meta.status.is_final:
            return None
        result = self.client.store.result(self.job_id)
        return result if result is not None and result.round >= meta.round else None

    def wait(self, timeout: float | None = None) -> JobResult:
        """Block until the job finishes and return its result (does not raise for a failed job).

        Raises:
            JobTimeoutError: ``timeout`` seconds passed first.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        last = "0-0"
        while True:
            result = self.result()
            if result is not None:
                return result
            remaining = 5.0 if deadline is None else min(5.0, deadline - time.monotonic())
            if remaining <= 0:
                raise JobTimeoutError(f"job {self.job_id} did not finish within {timeout}s")
            seen = self.client.store.wait_final(self.job_id, last, int(remaining * 1000))
            if seen is not None:
                last = seen

    def cancel(self) -> bool:
        """Cancel the job: branches not yet started are cancelled, running ones stop at the next check.

        Returns False if it was already being cancelled.
        """
        return self.client.store.cancel(self.job_id, "user")

    def retry_failed(self) -> JobHandle:
        """Re-run only the failed and cancelled branches (a new small chord), then merge again.

        Raises:
            FanflowError: the job has not finished, or another retry started first.
        """
        store = self.client.store
        meta = store.meta(self.job_id)
        result = self.result()
        if result is None:
            raise FanflowError(f"job {self.job_id} has not finished; wait for it before retrying")
        keys = [o.key for o in result.outcomes if not o.succeeded]
        if not keys:
            return self
        job = store.load_job(self.job_id)
        new_round = meta.round + 1
        if not store.start_round(self.job_id, new_round, len(keys)):
            raise FanflowError(f"job {self.job_id} is already being retried")
        build_fanout_chord(self.client.app, self.job_id, job.spec, new_round, keys).apply_async()
        return self
