"""Celery entry point of the benchmark's worker: ``celery -A bench.apps worker ...``.

One app serves both systems: fanflow's tasks (``create_app`` from ``FANFLOW_*`` variables) plus the
plain baseline's ``bench.noop`` / ``bench.collect``. Its result backend is fanflow's ``ResultBackend``,
a ``RedisBackend`` on the same URL with Celery's own key names, so the plain chord's results and
joins land exactly where a plain ``redis://`` backend would put them.

``BENCH_EXPERIMENTS`` (comma-separated names from ``bench.experiments``) patches fanflow first.
"""

from __future__ import annotations

import os

from bench.experiments import apply_experiments
from bench.tasks import STAMP_RATE_ENV, register_plain_tasks, register_rate_task
from fanflow.app import create_app
from fanflow.config import Settings

apply_experiments([name for name in os.environ.get("BENCH_EXPERIMENTS", "").split(",") if name])

app = create_app(Settings())
register_plain_tasks(app)
register_rate_task(app, os.environ.get(STAMP_RATE_ENV, "10/s"))

__all__ = ["app"]
