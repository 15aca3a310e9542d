"""Celery entry point for worker processes: ``celery -A workers worker -Q fanflow.py -P threads -c 16``.

Reads ``FANFLOW_*`` settings from the environment (this module is an edge of the system).
Queues: ``fanflow.llm`` (model calls; threads, high concurrency), ``fanflow.agent`` (CLI agents),
``fanflow.py`` (Python callables), ``fanflow.control`` (merges). Flower: ``celery -A workers flower``.
"""

from __future__ import annotations

from fanflow.app import create_app
from fanflow.config import Settings

app = create_app(Settings())

__all__ = ["app"]
