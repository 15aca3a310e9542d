"""The Celery tasks: ``fanflow.subtask`` (one branch) and ``fanflow.merge`` (the chord body).

Both are thin: the branch logic lives in ``fanflow.branch`` and the fan-in in ``fanflow.fanin``.
A branch task returns its status and never raises for a domain failure, so the chord completes.
"""

from __future__ import annotations

import logging
import random
from typing import Any

import redis
from celery import Celery, Task

from fanflow.branch import WAIT, BranchRunner
from fanflow.errors import BackendError
from fanflow.fanin import finalize_job
from fanflow.result import ErrorInfo, JobResult, JobStatus, OutcomeStatus, SubtaskOutcome

__all__ = ["MERGE_TASK", "SUBTASK_TASK", "register_tasks"]

SUBTASK_TASK = "fanflow.subtask"
MERGE_TASK = "fanflow.merge"

logger = logging.getLogger("fanflow")

_BACKEND_ERRORS = (redis.ConnectionError, redis.TimeoutError, BackendError)


def _retry_later(task: Task[Any, Any], exc: Exception) -> BaseException:
    """Redis or the broker is unreachable: deliver the same task again later rather than lose it.

    Returns the exception to raise: Celery's Retry, or ``exc`` itself after 30 tries.
    """
    retries = task.request.retries
    if retries >= 30:
        return exc
    logger.warning("fanflow: %s: backend unreachable, retry %d: %s", task.name, retries + 1, exc)
    countdown = min(30.0, 0.5 * 2.0**retries) * (0.5 + random.random())
    return task.retry(countdown=countdown, max_retries=None)


def register_tasks(app: Celery, runner: BranchRunner) -> None:
    """Register fanflow's tasks on ``app``, bound to ``runner`` (and its job store)."""
    store = runner.store

    @app.task(name=SUBTASK_TASK, bind=True, ignore_result=True, max_retries=None, shared=False)
    def subtask(self: Task[Any, Any], job_id: str, key: str, round_: int = 0) -> str:
        """Run one branch of a fan-out and return its status (the outcome itself goes to the job store)."""
        try:
            status = runner.run(job_id, key, round_, worker=self.request.hostname)
        except _BACKEND_ERRORS as exc:
            raise _retry_later(self, exc) from exc
        except Exception as exc:
            logger.exception("fanflow: internal error in branch %s/%s", job_id, key)
            return _record_internal_error(runner, job_id, key, round_, exc)
        if status == WAIT:
            # max_concurrency reached: re-queue without counting an attempt.
            raise self.retry(countdown=0.1 + random.random() * 0.4, max_retries=None)
        return status

    @app.task(name=MERGE_TASK, bind=True, max_retries=None, shared=False)
    def merge(self: Task[Any, Any], statuses: list[Any], job_id: str, round_: int = 0) -> str:
        """Fan-in: apply the failure policy and the merge to the stored outcomes; store the JobResult."""
        try:
            return finalize_job(store, job_id, round_).status.value
        except _BACKEND_ERRORS as exc:
            raise _retry_later(self, exc) from exc
        except Exception as exc:
            logger.exception("fanflow: internal error merging job %s", job_id)
            _save_internal_error(runner, job_id, round_, exc)
            return JobStatus.FAILED.value


def _record_internal_error(runner: BranchRunner, job_id: str, key: str, round_: int, exc: Exception) -> str:
    outcome = SubtaskOutcome(
        key=key, status=OutcomeStatus.FAILED, round=round_,
        error=ErrorInfo(type=type(exc).__name__, message=f"internal error: {exc}"[:2000], retryable=True),
    )  # fmt: skip
    try:
        runner.store.record_outcome(job_id, outcome, cancel_on_failure=False)
    except Exception:
        logger.exception("fanflow: could not record the internal error of %s/%s", job_id, key)
    return OutcomeStatus.FAILED.value


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
