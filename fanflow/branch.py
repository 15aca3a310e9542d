"""Running one branch on a worker: begin, attempts with backoff, timeout, success criteria, record.

The branch never raises for a domain failure: whatever happens becomes a ``SubtaskOutcome`` that is
recorded in the job store exactly once per (branch, round), so the chord always completes and the
merge applies the failure policy.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections import OrderedDict
from typing import Any

from fanflow.errors import (
    BranchTimeoutError,
    DeadlineExceededError,
    DeliveryCapError,
    JobNotFoundError,
    SuccessCriteriaError,
    TransientError,
)
from fanflow.executors import Execution, execute
from fanflow.result import ErrorInfo, OutcomeStatus, SubtaskOutcome, Usage
from fanflow.spec import AllOrNothing, RetryPolicy, Subtask, SuccessCriteria
from fanflow.store import JobStore, StoredJob

__all__ = ["WAIT", "BranchRunner", "check_success", "is_retryable"]

#: Returned by ``BranchRunner.run`` when ``max_concurrency`` is reached: re-queue, not a failure.
WAIT = "wait"

_ERROR_MESSAGE_LIMIT = 2000


class BranchRunner:
    """Runs branches against a job store; one per worker process, shared by its threads."""

    def __init__(self, store: JobStore, *, delivery_cap: int, lease_s: float, cache_size: int = 256) -> None:
        self.store = store
        self.delivery_cap = delivery_cap
        self.lease_s = lease_s
        self._jobs: OrderedDict[str, StoredJob] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()
        self._loading: dict[str, threading.Lock] = {}

    def job(self, job_id: str) -> StoredJob:
        """The job's stored spec, read from Redis once per job and cached (specs never change).

        When a fan-out starts, every thread of the worker misses the cache at once: one of them
        loads the spec (GET + validation of every subtask), the others wait for it.
        """
        with self._lock:
            job = self._jobs.get(job_id)
            if job is not None:
                self._jobs.move_to_end(job_id)
                return job
            gate = self._loading.setdefault(job_id, threading.Lock())
        with gate:
            with self._lock:
                job = self._jobs.get(job_id)
            if job is not None:
                return job
            try:
                job = self.store.load_job(job_id)
            finally:
                with self._lock:
                    self._loading.pop(job_id, None)
            with self._lock:
                self._jobs[job_id] = job
                while len(self._jobs) > self._cache_size:
                    self._jobs.popitem(last=False)
            return job

    def run(self, job_id: str, key: str, round_: int, *, worker: str | None = None) -> str:
        """Run one delivery of a branch and return its status (or ``WAIT`` / why it did not run)."""
        try:
            job = self.job(job_id)
        except JobNotFoundError:
            return "missing"
        subtask = job.spec.subtask(key)
        lease = (subtask.timeout_s or self.lease_s) + 30
        verdict = self.store.begin_branch(
            job_id, key, round_, delivery_cap=self.delivery_cap,
            max_concurrency=job.spec.max_concurrency or 0, lease_s=lease,
        )  # fmt: skip
        if verdict.verdict == "run":
            outcome = self._execute(job_id, job, subtask, round_, worker)
        elif verdict.verdict == "cancelled":
            outcome = _cancelled(key, round_, verdict.cancel_reason)
        elif verdict.verdict == "capped":
            error = DeliveryCapError(
                f"delivered {verdict.deliveries} times (cap {self.delivery_cap}): its worker kept dying"
            )
            outcome = _failed(key, round_, error, attempts=0, usage=Usage(), started_at=None, worker=worker)
        else:  # wait, done, stale, missing
            return verdict.verdict
        self.store.record_outcome(
            job_id, outcome, cancel_on_failure=isinstance(job.spec.failure, AllOrNothing)
        )
        return outcome.status.value

    def _execute(
        self, job_id: str, job: StoredJob, subtask: Subtask, round_: int, worker: str | None
    ) -> SubtaskOutcome:
        started = time.time()
        policy = subtask.retry
        attempt = 0
        while True:
            attempt += 1
            execution = _attempt(job, subtask)
            if isinstance(execution, Execution):
                return SubtaskOutcome(
                    key=subtask.key, status=OutcomeStatus.SUCCEEDED, output=execution.output,
                    attempts=attempt, usage=execution.usage, round=round_, worker=worker,
                    started_at=started, finished_at=time.time(),
                )  # fmt: skip
            error = execution
            retryable = is_retryable(error, policy)
            if retryable and attempt < policy.attempts:
                delay = _retry_delay(error, policy, attempt)
                deadline = job.deadline_at
                if deadline is None or time.time() + delay < deadline:
                    reason = self.store.cancel_reason(job_id)
                    if reason:
                        return _cancelled(subtask.key, round_, reason, attempt)
                    time.sleep(delay)
                    continue
            return _failed(subtask.key, round_, error, attempts=attempt, usage=Usage(), started_at=started,
                           worker=worker)  # fmt: skip


def _cancelled(key: str, round_: int, reason: str | None, attempts: int = 0) -> SubtaskOutcome:
    why = "a sibling failed under all_or_nothing" if reason == "failure" else "the job was cancelled"
    return SubtaskOutcome(
        key=key, status=OutcomeStatus.CANCELLED, round=round_, attempts=attempts, finished_at=time.time(),
        error=ErrorInfo(type="Cancelled", message=f"stopped: {why}", retryable=True),
    )  # fmt: skip


def _attempt(job: StoredJob, subtask: Subtask) -> Execution | Exception:
    """One attempt: the execution, or the exception it ended with."""
    try:
        deadline = job.deadline_at
        timeout = subtask.timeout_s
        bound_by_deadline = False
        if deadline is not None:
            remaining = deadline - time.time()
            if remaining <= 0:
                raise DeadlineExceededError(f"the job's deadline_s={job.spec.deadline_s} passed")
            bound_by_deadline = timeout is None or remaining < timeout
            timeout = remaining if timeout is None else min(timeout, remaining)
        try:
            execution = _call_with_timeout(subtask, job.spec.context, timeout)
        except BranchTimeoutError:
            if bound_by_deadline:
                raise DeadlineExceededError(f"the job's deadline_s={job.spec.deadline_s} passed") from None
            raise
        output = _json_output(execution.output)
        if subtask.success is not None:
            check_success(output, subtask.success)
        return Execution(output=output, usage=execution.usage)
    except Exception as exc:  # noqa: BLE001 - every failure becomes the branch's outcome
        return exc


def _call_with_timeout(subtask: Subtask, context: Any, timeout: float | None) -> Execution:
    if timeout is None:
        return execute(subtask.run, context)
    # The threads pool ignores Celery's time limits, so the branch enforces its own. A Python thread
    # cannot be killed: on timeout the call is abandoned (it finishes in the background, its result
    # discarded) and the branch fails with BranchTimeoutError.
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["execution"] = execute(subtask.run, context)
        except BaseException as exc:  # noqa: BLE001 - handed back to the waiting thread
            box["error"] = exc

    thread = threading.Thread(target=target, name=f"fanflow-branch-{subtask.key}", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise BranchTimeoutError(f"ran longer than {timeout:.3g}s")
    if "error" in box:
        raise box["error"]
    execution: Execution = box["execution"]
    return execution


def _json_output(output: Any) -> Any:
    try:
        return json.loads(json.dumps(output))
    except (TypeError, ValueError) as exc:
        raise TypeError(f"the output is not JSON-serializable: {exc}") from exc


def check_success(output: Any, criteria: SuccessCriteria) -> None:
    """Check an output against a branch's success criteria.

    Raises:
        SuccessCriteriaError: saying which criterion failed.
    """
    if criteria.not_empty and output in (None, "", [], {}):
        raise SuccessCriteriaError("output is empty")
    if criteria.required_fields:
        if not isinstance(output, dict):
            raise SuccessCriteriaError(f"output must be an object with fields {criteria.required_fields}")
        missing = [name for name in criteria.required_fields if name not in output]
        if missing:
            raise SuccessCriteriaError(f"output lacks required fields {missing}")
    text = output if isinstance(output, str) else json.dumps(output)
    absent = [needle for needle in criteria.contains if needle not in text]
    if absent:
        raise SuccessCriteriaError(f"output does not contain {absent}")
    if criteria.max_chars is not None and len(text) > criteria.max_chars:
        raise SuccessCriteriaError(
            f"output has {len(text)} characters, more than max_chars={criteria.max_chars}"
        )


def is_retryable(error: BaseException, policy: RetryPolicy) -> bool:
    """True for ``TransientError`` and for exceptions whose class (or a base) is named in ``retry_on``."""
    if isinstance(error, TransientError):
        return True
    if isinstance(error, (DeadlineExceededError, SuccessCriteriaError)):
        return False
    names = set(policy.retry_on)
    return any(cls.__name__ in names or f"{cls.__module__}.{cls.__qualname__}" in names
               for cls in type(error).__mro__)  # fmt: skip


def _retry_delay(error: BaseException, policy: RetryPolicy, attempt: int) -> float:
    if isinstance(error, TransientError) and error.retry_after_s is not None:
        return error.retry_after_s
    return policy.delay_s(attempt, random.random())


def _failed(
    key: str,
    round_: int,
    error: BaseException,
    *,
    attempts: int,
    usage: Usage,
    started_at: float | None,
    worker: str | None,
) -> SubtaskOutcome:
    retryable = getattr(error, "retryable", None)
    info = ErrorInfo(
        type=type(error).__name__,
        message=str(error)[:_ERROR_MESSAGE_LIMIT] or type(error).__name__,
        retryable=bool(retryable)
        if retryable is not None
        else isinstance(error, (TimeoutError, ConnectionError)),
    )
    return SubtaskOutcome(
        key=key, status=OutcomeStatus.FAILED, error=info, attempts=attempts, usage=usage, round=round_,
        worker=worker, started_at=started_at, finished_at=time.time(),
    )  # fmt: skip
