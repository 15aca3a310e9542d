"""The Celery tasks: ``fanflow.subtask`` (one branch) and ``fanflow.merge`` (the fan-in).

Both are thin: the branch logic lives in ``fanflow.branch`` and the fan-in in ``fanflow.fanin``.

A branch records its outcome in the job store *before* Celery sees how it ended; a failed or
cancelled branch then raises ``BranchFailedError`` so that Celery's state and Flower say
``FAILURE`` with the branch's own error. Celery does not run a chord body after a failed header,
but it calls the body's error callbacks once every header task has returned: the merge is that
error callback too (``fanflow.canvas``), and it reads the outcomes from the store, so the fan-in
fires once either way and applies the failure policy.
"""

from __future__ import annotations

import logging
import random
from typing import Any

import redis
from celery import Celery, Task
from celery.exceptions import Ignore

from fanflow.admission import Deferral
from fanflow.branch import RUNNING, WAIT, BranchRunner
from fanflow.errors import BackendError, BranchFailedError
from fanflow.fanin import finalize_job
from fanflow.result import ErrorInfo, JobResult, JobStatus, SubtaskOutcome
from fanflow.store import MERGE_MEMBER

__all__ = ["BATCH_TASK", "MERGE_TASK", "NODE_TASK", "SUBTASK_TASK", "ChordFailureLogFilter", "register_tasks"]

SUBTASK_TASK = "fanflow.subtask"
MERGE_TASK = "fanflow.merge"
#: One node of a pipeline (``fanflow.pipeline.runtime``): a branch sent when its dependencies are done.
NODE_TASK = "fanflow.node"
#: Many model-call branches of one fan-out in one message (``fanflow.batching``).
BATCH_TASK = "fanflow.batch"

logger = logging.getLogger("fanflow")

#: An outage that outlasted the branch's patience (other Redis errors are bugs: they fail the task).
_BACKEND_ERRORS = (redis.ConnectionError, redis.TimeoutError, BackendError)


def _retry_later(task: Task[Any, Any], exc: Exception) -> BaseException:
    """Redis stayed unreachable past the branch's patience: deliver the same task again later.

    Returns the exception to raise: Celery's Retry, or ``exc`` itself after 30 tries. If the
    retry cannot be published either, the sweeper delivers the branch again once Redis is back.
    """
    retries = task.request.retries
    if retries >= 30:
        return exc
    logger.error("fanflow: %s[%s]: job store unreachable, retry %d: %s", task.name, task.request.id,
                 retries + 1, exc)  # fmt: skip
    countdown = min(30.0, 0.5 * 2.0**retries) * (0.5 + random.random())
    return task.retry(countdown=countdown, max_retries=None)


def branch_failure(outcome: SubtaskOutcome) -> BranchFailedError:
    """The exception a failed or cancelled branch raises to Celery: its error type and message."""
    error = outcome.error or ErrorInfo(type="Failed", message="no error recorded")
    return BranchFailedError(f"{error.type}: {error.message}")


class ChordFailureLogFilter(logging.Filter):
    """Turns Celery's traceback for a chord whose branch failed into one INFO line.

    A failed branch is a domain outcome, not a crash: Celery logs ``Chord ... raised: ChordError``
    with a traceback at ERROR when it skips the body, while fanflow's merge runs as the body's
    error callback and records the failure. Other chord errors are left as Celery logs them.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        """Rewrite the record when it is a chord error caused by a ``BranchFailedError``."""
        args = record.args
        if isinstance(args, tuple) and len(args) == 2 and "BranchFailedError" in repr(args[1]):
            record.msg = "fanflow: chord %s: a branch failed; the merge runs as the chord's error callback"
            record.args = (args[0],)
            record.levelno, record.levelname = logging.INFO, "INFO"
            record.exc_info, record.exc_text = None, None
        return True


def register_tasks(app: Celery, runner: BranchRunner) -> None:
    """Register fanflow's tasks on ``app``, bound to ``runner`` (and its job store)."""
    batches = runner.batches

    @app.task(
        name=SUBTASK_TASK, bind=True, ignore_result=True, max_retries=None, shared=False,
        throws=(BranchFailedError,),  # expected: logged as one line, not as a crash with a traceback
    )  # fmt: skip
    def subtask(self: Task[Any, Any], job_id: str, key: str, round_: int = 0) -> str:
        """Run one branch of a fan-out; its outcome goes to the job store, its status to Celery."""
        return run_branch(self, runner, job_id, key, round_)

    @app.task(
        name=NODE_TASK, bind=True, ignore_result=True, max_retries=None, shared=False,
        throws=(BranchFailedError,),
    )  # fmt: skip
    def node(self: Task[Any, Any], job_id: str, key: str, round_: int = 0) -> str:
        """Run one node of a pipeline: its outcome goes to the job store and sends what it unblocks."""
        return run_branch(self, runner, job_id, key, round_)

    @app.task(
        name=BATCH_TASK, bind=True, ignore_result=True, max_retries=None, shared=False,
        throws=(BranchFailedError,),
    )  # fmt: skip
    def batch(self: Task[Any, Any], job_id: str, keys: list[str], round_: int = 0) -> str:
        """Run a batch of a fan-out's model-call branches at once; each outcome goes to the job store."""
        try:
            return batches.run(self, job_id, keys, round_)
        except _BACKEND_ERRORS as exc:
            raise _retry_later(self, exc) from exc

    @app.task(name=MERGE_TASK, bind=True, ignore_result=True, max_retries=None, shared=False)
    def merge(self: Task[Any, Any], statuses: Any, job_id: str, round_: int = 0) -> str:
        """Fan-in: apply the failure policy and the merge to the stored outcomes; store the JobResult.

        Called as the chord body (``statuses`` is the header's return values), as its error
        callback (``statuses`` is the body's task id), or by the sweeper (``None``): it reads
        everything from the job store, and runs once per round whoever calls it.
        """
        return run_merge(self, runner, job_id, round_)


def run_branch(task: Task[Any, Any], runner: BranchRunner, job_id: str, key: str, round_: int) -> str:
    """The body of ``fanflow.subtask``."""
    try:
        result = runner.run(job_id, key, round_, worker=task.request.hostname,
                            first_try=not task.request.retries and task.request.eta is None)  # fmt: skip
    except _BACKEND_ERRORS as exc:
        raise _retry_later(task, exc) from exc
    if result == WAIT:
        # max_concurrency reached: re-queue without counting an attempt.
        raise task.retry(countdown=0.1 + random.random() * 0.4, max_retries=None)
    if isinstance(result, Deferral):
        # Its limits will not admit it soon: send the message again later, thread freed; neither
        # an attempt nor a delivery is counted.
        raise task.retry(countdown=result.countdown_s, max_retries=None)
    if result == RUNNING:
        # Another delivery of this message runs the branch and holds its lease (the broker
        # restored the message after its visibility timeout): drop this copy without telling the
        # chord, which counts the running delivery when it returns.
        raise Ignore()
    if isinstance(result, SubtaskOutcome):
        if not result.succeeded:
            raise branch_failure(result)
        return result.status.value
    return str(result)


def run_merge(task: Task[Any, Any], runner: BranchRunner, job_id: str, round_: int) -> str:
    """The body of ``fanflow.merge``: once per round, under a lease its worker renews."""
    store, keeper = runner.store, runner.keeper
    token = keeper.new_token()
    try:
        verdict = runner.patiently(
            lambda: store.begin_merge(job_id, round_, token=token, lease_s=runner.lease_s), "began a merge"
        )
    except _BACKEND_ERRORS as exc:
        raise _retry_later(task, exc) from exc
    if verdict == RUNNING:
        raise Ignore()  # another live delivery is merging this round
    if verdict != "run":
        return verdict  # done, stale, missing
    keeper.hold(job_id, MERGE_MEMBER, token)
    try:
        merged = runner.patiently(
            lambda: finalize_job(store, job_id, round_, spending=runner.spending), "merged"
        )
        return merged.status.value
    except _BACKEND_ERRORS as exc:
        raise _retry_later(task, exc) from exc
    except Exception as exc:
        logger.exception("fanflow: internal error merging job %s", job_id)
        _save_internal_error(runner, job_id, round_, exc)
        return JobStatus.FAILED.value
    finally:
        keeper.release(job_id, MERGE_MEMBER)


def _save_internal_error(runner: BranchRunner, job_id: str, round_: int, exc: Exception) -> None:
    try:
        job = runner.job(job_id)
        runner.store.save_result(
            job_id,
            JobResult(
                job_id=job_id, name=job.spec.name, status=JobStatus.FAILED, outcomes=[], round=round_,
                error=ErrorInfo(type=type(exc).__name__, message=f"merge failed: {exc}"[:2000]),
            ),
        )  # fmt: skip
    except Exception:
        logger.exception("fanflow: could not save the merge error of job %s", job_id)
