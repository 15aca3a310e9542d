"""Model-call branches in batches: one Celery message runs many branches at once on a worker.

A model call spends about a second waiting and a few milliseconds of CPU, most of it Celery's own
per-message work (consume, trace, ack, events) rather than the call's. A 2-core host with a
thousand calls in flight runs out of CPU on those milliseconds, not on the calls. So a big fan-out
of model calls (``MIN_BRANCHES`` or more ``llm`` subtasks, no ``max_concurrency``, not paced at
submit) is sent as chord header tasks ``fanflow.batch(job_id, keys, round)`` of ``batch_size``
branches each (``FANFLOW_BATCH_SIZE``; 0 sends one message per branch). Nothing else changes for a
branch: on the worker each one runs on a thread of the batch pool through the same ``BranchRunner``
-- its own begin, lease, limits, budget, retries with backoff and feedback, outcome recorded once --
and, with task events on, Flower still gets a task per branch (``fanflow.subtask`` with the branch's
own id, received, started, succeeded or failed, with its runtime).

The batches are the chord's header: the merge runs once when every batch has returned (a failed
branch makes its batch raise, so the merge runs as the chord's error callback, as for single
branches). A batch whose worker dies is delivered again as a whole, with the same id and place in
the chord; the job store runs only its branches without an outcome.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from celery import Task
from celery.exceptions import Ignore

from fanflow.admission import Deferral
from fanflow.errors import BranchFailedError
from fanflow.result import SubtaskOutcome
from fanflow.spec import FanOut

if TYPE_CHECKING:
    from fanflow.branch import BranchRunner

__all__ = ["MIN_BRANCHES", "BatchRunner", "batch_plan", "batches_of"]

#: Fan-outs of fewer model calls send one message per branch.
MIN_BRANCHES = 100
#: The batch pool's threads unless the worker sets them (its concurrency).
DEFAULT_THREADS = 500

logger = logging.getLogger("fanflow")


def batch_plan(spec: FanOut, size: int, *, paced: bool) -> list[list[str]] | None:
    """The batches a fan-out's first round is sent in, in declared order; None: one message per branch."""
    if size <= 1 or paced or spec.max_concurrency is not None or len(spec.subtasks) < MIN_BRANCHES:
        return None
    if any(subtask.run.kind != "llm" for subtask in spec.subtasks):
        return None
    return batches_of([subtask.key for subtask in spec.subtasks], size)


def batches_of(keys: Sequence[str], size: int) -> list[list[str]]:
    """``keys`` cut into batches of ``size``, in order (the same on every call: batch ids are stable)."""
    return [list(keys[start : start + size]) for start in range(0, len(keys), size)]


class BatchRunner:
    """Runs a batch's branches at once on a worker process's batch pool (threads)."""

    def __init__(self, runner: BranchRunner, *, threads: int = DEFAULT_THREADS) -> None:
        self.runner = runner
        self.threads = threads
        self._pool: ThreadPoolExecutor | None = None
        self._pid = 0
        self._lock = threading.Lock()
        self._dispatcher: Any = None
        self._dispatcher_pid = 0

    def _executor(self) -> ThreadPoolExecutor:
        with self._lock:  # made on first use, and again in a forked child
            if self._pool is None or self._pid != os.getpid():
                self._pool = ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix="fanflow-batch")
                self._pid = os.getpid()
            return self._pool

    def run(self, task: Task[Any, Any], job_id: str, keys: list[str], round_: int) -> str:
        """Run every branch of the batch; return when each has an outcome.

        Raises:
            Ignore: another live delivery runs one of its branches (it returns for the batch).
            BranchFailedError: a branch failed or was cancelled (the chord's merge runs as its
                error callback).
            redis.ConnectionError, BackendError: the job store stayed unreachable (the batch is
                delivered again later; branches already recorded are not run again).
        """
        worker = task.request.hostname
        results = list(self._executor().map(lambda key: self._branch(job_id, key, round_, worker), keys))
        errors = [result for result in results if isinstance(result, BaseException)]
        if errors:
            raise errors[0]
        outcomes = [result for result in results if isinstance(result, SubtaskOutcome)]
        if task.app.conf.worker_send_task_events:
            self._send_events(task, job_id, round_, outcomes)
        if any(result == "running" for result in results):
            raise Ignore()
        failed = [outcome for outcome in outcomes if not outcome.succeeded]
        if failed:
            first = failed[0]
            error = f"{first.error.type}: {first.error.message}" if first.error else first.status.value
            raise BranchFailedError(
                f"{len(failed)} of {len(keys)} branches did not succeed; {first.key}: {error}"
            )
        return "succeeded"

    def _branch(self, job_id: str, key: str, round_: int, worker: str | None) -> object:
        """One branch to its end: waits for its limits in place (a batch is not sent again for one)."""
        first_try = True
        try:
            while True:
                result = self.runner.run(job_id, key, round_, worker=worker, first_try=first_try)
                if isinstance(result, Deferral):
                    time.sleep(result.countdown_s)
                    first_try = False
                elif result == "wait":  # max_concurrency (not batched, unless raised after submit)
                    time.sleep(0.1 + random.random() * 0.4)
                else:
                    return result
        except Exception as exc:  # noqa: BLE001 - handed to the batch, which retries as a whole
            return exc

    def _events(self, task: Task[Any, Any]) -> Any:
        """This process's event dispatcher for batches: task events buffered, sent as one message."""
        with self._lock:
            if self._dispatcher is None or self._dispatcher_pid != os.getpid():
                connection = task.app.connection_for_write()
                self._dispatcher = task.app.events.Dispatcher(
                    connection, hostname=task.request.hostname, buffer_group=["task"], buffer_limit=1_000_000
                )
                self._dispatcher_pid = os.getpid()
            return self._dispatcher

    def _send_events(
        self, task: Task[Any, Any], job_id: str, round_: int, outcomes: list[SubtaskOutcome]
    ) -> None:
        """A task per branch for Flower: received, started, then succeeded or failed, with its times --
        all of a batch's events in one ``task.multi`` message (Celery's event receivers take lists)."""
        from fanflow.canvas import branch_task_id
        from fanflow.tasks import SUBTASK_TASK

        request = task.request
        try:
            dispatcher = self._events(task)
            shadow = f"{SUBTASK_TASK}[{self.runner.job(job_id).spec.name}:"  # as Flower names a branch
            for outcome in outcomes:
                uuid = branch_task_id(job_id, round_, outcome.key)
                started = outcome.started_at or outcome.finished_at or time.time()
                finished = outcome.finished_at or started
                dispatcher.send(
                    "task-received", uuid=uuid, name=f"{shadow}{outcome.key}]",
                    args=repr((job_id, outcome.key, round_)), kwargs="{}", root_id=request.root_id,
                    parent_id=request.id, timestamp=started,
                )  # fmt: skip
                dispatcher.send("task-started", uuid=uuid, timestamp=started)
                if outcome.succeeded:
                    dispatcher.send("task-succeeded", uuid=uuid, result=repr(outcome.status.value),
                                    runtime=finished - started, timestamp=finished)  # fmt: skip
                else:
                    error = f"{outcome.error.type}: {outcome.error.message}" if outcome.error else "Failed"
                    exception = repr(BranchFailedError(error[:500]))  # what Celery reports for a branch
                    dispatcher.send("task-failed", uuid=uuid, exception=exception, traceback="",
                                    timestamp=finished)  # fmt: skip
            dispatcher.flush()
        except Exception:  # events are for watching: never fail a batch for them
            logger.warning(
                "fanflow: could not send the task events of a batch of job %s", job_id, exc_info=True
            )
            with self._lock:
                self._dispatcher = None  # a new connection next time
