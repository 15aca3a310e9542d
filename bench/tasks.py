"""The benchmark's work: a no-op for fanflow's ``PyCall`` and the plain Celery tasks of the baseline.

No side effects at import: producers import this module to check ``PyCall`` import paths, and the
worker entry (``bench.apps``) imports it to register the plain tasks next to fanflow's.
"""

from __future__ import annotations

from typing import Any

from celery import Celery, Task

from fanflow.app import CONTROL_QUEUE, QUEUES

__all__ = ["COLLECT_TASK", "NOOP_PATH", "NOOP_TASK", "PY_QUEUE", "noop", "register_plain_tasks"]

#: The queue both systems' branches go to, and fanflow's merges and the plain chord body go to.
PY_QUEUE = QUEUES["python"]
NOOP_TASK = "bench.noop"
COLLECT_TASK = "bench.collect"
#: Import path of ``noop`` for fanflow's ``PyCall``.
NOOP_PATH = f"{__name__}:noop"


def noop() -> None:
    """Do nothing: each branch then costs exactly its framework's overhead."""


def register_plain_tasks(app: Celery) -> tuple[Task[Any, Any], Task[Any, Any]]:
    """Register the baseline's header task (``bench.noop``) and chord body (``bench.collect``) on ``app``.

    The tasks carry their queues (branch queue and control queue, as fanflow's do), so they route
    the same way from the producer and from the worker that publishes the chord body.
    """

    @app.task(name=NOOP_TASK, queue=PY_QUEUE, shared=False)
    def plain_noop() -> None:
        """The baseline's branch: nothing."""

    @app.task(name=COLLECT_TASK, queue=CONTROL_QUEUE, shared=False)
    def collect(results: list[Any]) -> int:
        """The baseline's chord body: how many header results arrived."""
        return len(results)

    return plain_noop, collect
