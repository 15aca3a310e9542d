"""The benchmark's work: a no-op for fanflow's ``PyCall`` and the plain Celery tasks of the baseline.

No side effects at import: producers import this module to check ``PyCall`` import paths, and the
worker entry (``bench.apps``) imports it to register the plain tasks next to fanflow's.
"""

from __future__ import annotations

import time
from typing import Any

from celery import Celery, Task

from fanflow.app import CONTROL_QUEUE, QUEUES

__all__ = [
    "COLLECT_TASK", "NOOP_PATH", "NOOP_TASK", "PY_QUEUE", "STAMP_PATH", "STAMP_QUEUE", "noop",
    "register_plain_tasks", "register_rate_task", "stamp",
]  # fmt: skip

#: The queue both systems' branches go to, and fanflow's merges and the plain chord body go to.
PY_QUEUE = QUEUES["python"]
NOOP_TASK = "bench.noop"
COLLECT_TASK = "bench.collect"
#: Import path of ``noop`` for fanflow's ``PyCall``.
NOOP_PATH = f"{__name__}:noop"


#: The queue of the rate-limit comparison's plain Celery task.
STAMP_QUEUE = "bench.rate"
#: Rate of ``bench.stamp`` (Celery's ``rate_limit``: per worker instance).
STAMP_RATE_ENV = "BENCH_STAMP_RATE"
#: Import path of ``stamp`` for fanflow's ``PyCall``.
STAMP_PATH = f"{__name__}:stamp"


def noop() -> None:
    """Do nothing: each branch then costs exactly its framework's overhead."""


def stamp(path: str) -> None:
    """Append this call's start time to ``path`` (one small append: atomic across processes)."""
    with open(path, "a", encoding="utf-8") as file:
        file.write(f"{time.time()!r}\n")


def register_rate_task(app: Celery, rate: str) -> Task[Any, Any]:
    """Register ``bench.stamp`` with Celery's own ``rate_limit`` (e.g. ``"10/s"``)."""

    @app.task(name="bench.stamp", queue=STAMP_QUEUE, rate_limit=rate, ignore_result=True, shared=False)
    def plain_stamp(path: str) -> None:
        """The baseline's rate-limited task."""
        stamp(path)

    return plain_stamp


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
