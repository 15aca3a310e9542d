"""Running one branch on a worker: begin, attempts with backoff, timeout, success criteria, record.

The branch never raises for a domain failure: whatever happens becomes a ``SubtaskOutcome`` that is
recorded in the job store exactly once per (branch, round), so the chord always completes and the
merge applies the failure policy.
"""

from __future__ import annotations

import functools
import logging
import random
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import redis

from fanflow.admission import Deferral, Gate
from fanflow.batching import BatchRunner
from fanflow.errors import (
    BackendError,
    BranchTimeoutError,
    DeadlineExceededError,
    DeliveryCapError,
    JobNotFoundError,
    OutputValidationError,
    RateLimitedError,
    SuccessCriteriaError,
    TransientError,
)
from fanflow.executors import BranchInput, Execution, Executor, executor_for
from fanflow.judging import check_success, final_rejection, judge
from fanflow.outage import OutageGuard
from fanflow.recovery import LeaseKeeper
from fanflow.result import ErrorInfo, OutcomeStatus, SubtaskOutcome, Usage
from fanflow.spec import AllOrNothing, RetryPolicy, Subtask
from fanflow.spending import BudgetExhausted, Spending, Ticket
from fanflow.store import JobStore, StoredJob

if TYPE_CHECKING:
    from fanflow.pipeline.runtime import PipelineRuntime

__all__ = ["RUNNING", "WAIT", "BranchRunner", "check_success", "is_retryable", "ride_out"]

#: Returned by ``BranchRunner.run`` when ``max_concurrency`` is reached: re-queue, not a failure.
WAIT = "wait"
#: Returned by ``BranchRunner.run`` when another live delivery runs the branch: drop this one.
RUNNING = "running"

_ERROR_MESSAGE_LIMIT = 2000
#: A 429 without Retry-After cools the branch's limit keys down this long.
DEFAULT_COOLDOWN_S = 5.0
#: 429s in a row one branch takes without counting attempts before they count.
MAX_THROTTLED = 20
_MAXCLIENTS = "max number of clients"

logger = logging.getLogger("fanflow")

T = TypeVar("T")


def ride_out(call: Callable[[], T], *, patience_s: float, what: str) -> T:
    """Run a job-store call, retrying through a Redis outage of up to ``patience_s`` seconds.

    A branch whose work is done must not lose its outcome because Redis restarted; waiting in
    place also keeps the message unacked (re-queueing through a broker that is down cannot work).
    The retrying is ``OutageGuard``'s, as on the producer side; Redis refusing connections
    (``maxclients``) is logged on every try, so a worker that cannot connect never retries silently.

    Raises:
        BackendError: Redis stayed unreachable (or refused connections) for ``patience_s``.
    """

    def attempt() -> T:
        try:
            return call()
        except redis.ConnectionError as exc:
            if _MAXCLIENTS in str(exc):
                logger.error(
                    "fanflow: Redis refused a connection (maxclients reached) while it %s: raise Redis's "
                    "maxclients or lower the workers' concurrency", what,
                )  # fmt: skip
            raise

    guard = OutageGuard(patience_s, "the job store's Redis")
    try:
        return guard.call(attempt, what)
    except BackendError as exc:
        if _MAXCLIENTS in str(exc.__cause__):
            raise BackendError(
                f"Redis refused connections (maxclients reached) for {patience_s:.0f}s while it {what}: "
                "raise Redis's maxclients or lower the workers' concurrency"
            ) from exc.__cause__
        raise


class BranchRunner:
    """Runs branches against a job store; one per worker process, shared by its threads."""

    def __init__(
        self,
        store: JobStore,
        *,
        delivery_cap: int,
        lease_s: float,
        keeper: LeaseKeeper | None = None,
        gate: Gate | None = None,
        patience_s: float = 60.0,
        cache_size: int = 256,
    ) -> None:
        self.store = store
        self.gate = gate
        self.spending = Spending(store, gate)
        self.delivery_cap = delivery_cap
        self.lease_s = lease_s
        self.keeper = keeper or LeaseKeeper(store, lease_s=lease_s)
        self.patience_s = patience_s
        self._jobs: OrderedDict[str, StoredJob] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()
        self._loading: dict[str, threading.Lock] = {}
        #: Runs pipelines' nodes (set by ``fanflow.app``): what a node sees, what its outcome sets off.
        self.pipelines: PipelineRuntime | None = None
        #: Runs batches of model-call branches on a pool of threads (``fanflow.batching``).
        self.batches = BatchRunner(self)

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
                job = self.patiently(lambda: self.store.load_job(job_id), "loaded a job's spec")
            finally:
                with self._lock:
                    self._loading.pop(job_id, None)
            with self._lock:
                self._jobs[job_id] = job
                while len(self._jobs) > self._cache_size:
                    self._jobs.popitem(last=False)
            return job

    def patiently(self, call: Callable[[], T], what: str) -> T:
        return ride_out(call, patience_s=self.patience_s, what=what)

    def run(
        self, job_id: str, key: str, round_: int, *, worker: str | None = None, first_try: bool = True
    ) -> SubtaskOutcome | Deferral | str:
        """Run one delivery of a branch (``first_try``: its message was not sent again by a deferral).

        Returns the branch's outcome (recorded now, or earlier by another delivery), a
        ``Deferral`` (its limits did not admit it soon: send it again later), or why this delivery
        did nothing: ``WAIT`` (re-queue it), ``RUNNING`` (a duplicate: drop it), ``stale`` (an
        older round), ``missing`` (the job expired).
        """
        try:
            job = self.job(job_id)
        except JobNotFoundError:
            return "missing"
        subtask = job.spec.subtask(key)
        if job.pipeline is not None and self.pipelines is not None:
            nodes, bare = self.pipelines, subtask
            subtask = self.patiently(lambda: nodes.materialize(job_id, job, bare), "read a node's inputs")
        if first_try:
            place = self.patiently(lambda: self._place_in_line(job_id, job, subtask), "paced a branch")
            if place is not None:
                return place  # nothing began: its message comes back at its place in line
        token = self.keeper.new_token()
        verdict = self.patiently(
            lambda: self.store.begin_branch(
                job_id, key, round_, token=token, delivery_cap=self.delivery_cap,
                max_concurrency=job.spec.max_concurrency or 0, lease_s=self.lease_s,
            ),
            "began a branch",
        )  # fmt: skip
        if verdict.verdict == "done":
            stored = self.patiently(lambda: self.store.outcome(job_id, key), "read an outcome")
            return stored if stored is not None else "done"
        if verdict.verdict == "cancelled":
            outcome = _cancelled(key, round_, verdict.cancel_reason)
        elif verdict.verdict == "capped":
            error = DeliveryCapError(
                f"delivered {verdict.deliveries} times (cap {self.delivery_cap}): its worker kept dying"
            )
            outcome = _failed(key, round_, error, attempts=0, usage=Usage(), started_at=None, worker=worker)
        elif verdict.verdict == "run":
            self.keeper.hold(job_id, key, token)
            try:
                result = self._execute_safely(job_id, job, subtask, round_, worker)
                if isinstance(result, Deferral):
                    wait = result.countdown_s
                    self.patiently(
                        lambda: self.store.defer_branch(job_id, key, round_, token=token, countdown_s=wait),
                        "deferred a branch",
                    )
                    return result
                return self._record(job_id, job, result, token)
            finally:
                self.keeper.release(job_id, key)
        else:  # wait, running, stale, missing
            return verdict.verdict
        return self._record(job_id, job, outcome, token)

    def _record(self, job_id: str, job: StoredJob, outcome: SubtaskOutcome, token: str) -> SubtaskOutcome:
        if job.pipeline is not None and self.pipelines is not None:
            outcome = self.pipelines.judge(job, outcome)
            self.pipelines.record(self, job_id, job, outcome, token)
            return outcome
        cancel = isinstance(job.spec.failure, AllOrNothing)
        # With a budget every call was counted as it settled; without one, counted now, once.
        spend = outcome.usage_by_model if job.spec.budget is None else None
        self.patiently(
            lambda: self.store.record_outcome(job_id, outcome, cancel_on_failure=cancel, token=token,
                                              spend=spend),
            "recorded an outcome",
        )  # fmt: skip
        return outcome

    def _execute_safely(
        self, job_id: str, job: StoredJob, subtask: Subtask, round_: int, worker: str | None
    ) -> SubtaskOutcome | Deferral:
        try:
            return self._execute(job_id, job, subtask, round_, worker)
        except Exception as exc:
            logger.exception("fanflow: internal error in branch %s/%s", job_id, subtask.key)
            return SubtaskOutcome(
                key=subtask.key, status=OutcomeStatus.FAILED, round=round_, worker=worker,
                error=ErrorInfo(
                    type=type(exc).__name__, message=f"internal error: {exc}"[:2000], retryable=True
                ),
            )  # fmt: skip

    def _execute(
        self, job_id: str, job: StoredJob, subtask: Subtask, round_: int, worker: str | None
    ) -> SubtaskOutcome | Deferral:
        state = _Attempts(keys=[])
        result = self._run_attempts(job_id, job, subtask, round_, worker, state)
        if isinstance(result, SubtaskOutcome) and state.by_model:
            return result.model_copy(update={"usage_by_model": dict(state.by_model)})
        return result

    def _run_attempts(
        self, job_id: str, job: StoredJob, subtask: Subtask, round_: int, worker: str | None, state: _Attempts
    ) -> SubtaskOutcome | Deferral:
        started = time.time()
        executor = executor_for(subtask.run.kind)
        branch = BranchInput(key=subtask.key, context=self._context(job_id, job, subtask.key),
                             vars=subtask.vars, timeout_s=subtask.timeout_s,
                             cancelled=lambda: self.store.cancel_reason(job_id) is not None)  # fmt: skip
        try:
            original = prepared = executor.prepare(subtask.run, branch)
        except Exception as exc:  # noqa: BLE001 - a template that cannot be filled fails the branch
            return _failed(subtask.key, round_, exc, attempts=0, usage=Usage(), started_at=started,
                           worker=worker)  # fmt: skip
        keys = state.keys = list(dict.fromkeys([*subtask.limits, *executor.limit_keys(subtask.run)]))

        def cancelled() -> bool:
            return self.store.cancel_reason(job_id) is not None

        while True:
            # Before the first attempt a long wait for the limits frees the thread (a Deferral).
            ticket = self.spending.admit(
                job_id, keys, executor.estimate(prepared), budget=job.spec.budget,
                model=getattr(subtask.run, "model", None), may_defer=state.attempt == 0, cancelled=cancelled,
                branch_key=subtask.key,
            )  # fmt: skip
            if isinstance(ticket, Deferral):
                return ticket
            if not isinstance(ticket, Ticket):
                reason = "budget" if isinstance(ticket, BudgetExhausted) else self.store.cancel_reason(job_id)
                return _cancelled(subtask.key, round_, reason, state.attempt, state.spent)
            state.attempt += 1
            result = _attempt(job, subtask, executor, prepared)
            if isinstance(result, Execution):
                # Without a budget to settle, the call's spend is counted with the outcome (once).
                self.spending.settle(job_id, ticket, result, key=subtask.key, count=False)
                state.add(result.model or getattr(subtask.run, "model", None), result.usage)
                judged = judge(subtask, result)
                if not isinstance(judged, BaseException):
                    return SubtaskOutcome(
                        key=subtask.key, status=OutcomeStatus.SUCCEEDED, output=judged.output,
                        attempts=state.attempt, usage=state.spent, round=round_, worker=worker,
                        started_at=started, finished_at=time.time(),
                    )  # fmt: skip
                # The call worked but its answer was rejected: a model is asked again with the
                # reasons fed back (the original request plus this answer only, never the history).
                next_step = self._after_rejection(job_id, job, subtask, executor, judged, state)
                if next_step == "again" and isinstance(judged, OutputValidationError):
                    prepared = executor.feedback(original, judged)
                    continue
                error: BaseException = judged
                if isinstance(judged, OutputValidationError):
                    error = final_rejection(judged, state.attempt, executor.retries_rejections)
            else:
                release = self._settle_failure(job_id, ticket, subtask.key, result, state)
                next_step = self._after_error(job_id, job, subtask, result, state, release=release)
                if next_step == "again":
                    continue
                error = result
            if next_step == "cancelled":
                return _cancelled(subtask.key, round_, self.store.cancel_reason(job_id), state.attempt,
                                  state.spent)  # fmt: skip
            return _failed(subtask.key, round_, error, attempts=state.attempt, usage=state.spent,
                           started_at=started, worker=worker)  # fmt: skip

    def _place_in_line(self, job_id: str, job: StoredJob, subtask: Subtask) -> Deferral | None:
        """On a branch's first try: when its job already has a line on a busy limit key, wait for
        its place — before the branch begins, so a long line costs one script call per branch."""
        if self.gate is None:
            return None
        executor = executor_for(subtask.run.kind)
        keys = list(dict.fromkeys([*subtask.limits, *executor.limit_keys(subtask.run)]))
        if not self.gate.any_limited(keys):
            return None  # no line without a limit (the common case: nothing to render or ask)
        branch = BranchInput(
            key=subtask.key, context=self._context(job_id, job, subtask.key), vars=subtask.vars
        )
        try:
            estimate = executor.estimate(executor.prepare(subtask.run, branch))
        except Exception:  # noqa: BLE001 - the branch fails on it when it runs; pace it by requests
            estimate = Usage()
        return self.gate.place_in_line(job_id, subtask.key, keys, estimate)

    def _context(self, job_id: str, job: StoredJob, key: str) -> Any:
        """The shared context a branch sees: its job's (a pipeline's fan-out node's branch: its fan-out's)."""
        if job.pipeline is not None and self.pipelines is not None:
            return self.pipelines.context(job_id, job, key)
        return job.spec.context

    def _settle_failure(
        self, job_id: str, ticket: Ticket, key: str, error: Exception, state: _Attempts
    ) -> Callable[[], object]:
        """How a failed call gives its reservations back: released, or — when it failed after
        spending (an agent that ran, then exited non-zero) — settled to what it spent."""
        spent = getattr(error, "usage", None)
        if not isinstance(spent, Usage) or spent.is_zero:
            return functools.partial(self.spending.release, job_id, ticket, key=key)
        run = Execution(output=None, usage=spent, model=getattr(error, "model", None))
        state.add(run.model, spent)
        return functools.partial(self.spending.settle, job_id, ticket, run, key=key, count=False)

    def _after_rejection(
        self,
        job_id: str,
        job: StoredJob,
        subtask: Subtask,
        executor: Executor,
        error: BaseException,
        state: _Attempts,
    ) -> str:
        """After a rejected answer: ``again`` (with feedback), ``cancelled`` or ``fail``."""
        if not isinstance(error, OutputValidationError) or not executor.retries_rejections:
            return "fail"
        if state.attempt >= subtask.retry.attempts or _past(job):
            return "fail"
        return "cancelled" if self.store.cancel_reason(job_id) else "again"

    def _after_error(
        self,
        job_id: str,
        job: StoredJob,
        subtask: Subtask,
        error: Exception,
        state: _Attempts,
        *,
        release: Callable[[], object],
    ) -> str:
        """After a failed call (whose reservations ``release`` gives back): ``again`` (after a
        cool-down or a backoff), ``cancelled`` or ``fail``."""
        throttled = isinstance(error, RateLimitedError) and state.throttled < MAX_THROTTLED
        if self.gate is not None and throttled and state.keys:
            # The provider knows better than our counters: every worker cools down (before this
            # call's slot is given back, so no other call slips in), and this attempt does not count.
            retry_after = error.retry_after_s if isinstance(error, RateLimitedError) else None
            self.gate.cool_down(state.keys, retry_after or DEFAULT_COOLDOWN_S)
            release()
            state.attempt -= 1
            state.throttled += 1
            return "again"
        release()
        policy = subtask.retry
        if not is_retryable(error, policy) or state.attempt >= policy.attempts:
            return "fail"
        delay = _retry_delay(error, policy, state.attempt)
        deadline = job.deadline_at
        if deadline is not None and time.time() + delay >= deadline:
            return "fail"
        if self.store.cancel_reason(job_id):
            return "cancelled"
        time.sleep(delay)
        return "again"


@dataclass(slots=True)
class _Attempts:
    """Where a branch's attempts stand."""

    keys: list[str]
    attempt: int = 0
    throttled: int = 0
    spent: Usage = field(default_factory=Usage)
    by_model: dict[str, Usage] = field(default_factory=dict)

    def add(self, model: str | None, usage: Usage) -> None:
        """Count what one call spent, in all and for its model."""
        if usage.is_zero:
            return
        self.spent += usage
        name = model or "other"
        self.by_model[name] = self.by_model.get(name, Usage()) + usage


def _past(job: StoredJob) -> bool:
    deadline = job.deadline_at
    return deadline is not None and time.time() >= deadline


_CANCEL_REASONS = {
    "failure": "a sibling failed under all_or_nothing",
    "budget": "budget exhausted",
}


def _cancelled(
    key: str, round_: int, reason: str | None, attempts: int = 0, usage: Usage | None = None
) -> SubtaskOutcome:
    why = _CANCEL_REASONS.get(reason or "", "the job was cancelled")
    kind = "BudgetExhausted" if reason == "budget" else "Cancelled"
    return SubtaskOutcome(
        key=key, status=OutcomeStatus.CANCELLED, round=round_, attempts=attempts, finished_at=time.time(),
        usage=usage or Usage(), error=ErrorInfo(type=kind, message=f"stopped: {why}", retryable=True),
    )  # fmt: skip


def _attempt(job: StoredJob, subtask: Subtask, executor: Executor, prepared: Any) -> Execution | Exception:
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
            return _call_with_timeout(executor, prepared, timeout, subtask.key)
        except BranchTimeoutError:
            if bound_by_deadline:
                raise DeadlineExceededError(f"the job's deadline_s={job.spec.deadline_s} passed") from None
            raise
    except Exception as exc:  # noqa: BLE001 - every failure becomes the branch's outcome
        return exc


def _call_with_timeout(executor: Executor, prepared: Any, timeout: float | None, key: str) -> Execution:
    if timeout is None or executor.enforces_timeout:
        return executor.execute(prepared)
    # The threads pool ignores Celery's time limits, so the branch enforces its own. A Python thread
    # cannot be killed: on timeout the call is abandoned (it finishes in the background, its result
    # discarded) and the branch fails with BranchTimeoutError.
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["execution"] = executor.execute(prepared)
        except BaseException as exc:  # noqa: BLE001 - handed back to the waiting thread
            box["error"] = exc

    thread = threading.Thread(target=target, name=f"fanflow-branch-{key}", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise BranchTimeoutError(f"ran longer than {timeout:.3g}s")
    if "error" in box:
        raise box["error"]
    execution: Execution = box["execution"]
    return execution


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
    output = getattr(error, "output", None)  # what a failed agent run left (its branch, its diff)
    return SubtaskOutcome(
        key=key, status=OutcomeStatus.FAILED, error=info, attempts=attempts, usage=usage, round=round_,
        worker=worker, started_at=started_at, finished_at=time.time(),
        output=output if isinstance(output, dict) else None,
    )  # fmt: skip
