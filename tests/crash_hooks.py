"""Loaded into e2e worker processes with ``--include tests.crash_hooks``: crash them on purpose.

``FANFLOW_TEST_CRASH=after-merge`` SIGKILLs the worker right after a ``fanflow.merge`` that merged
returns — its result saved, its message not yet acknowledged (``task_postrun`` runs before the
late ack). Nothing happens without the variable.
"""

from __future__ import annotations

import os
import signal
from typing import Any

from celery.signals import task_postrun

CRASH_VARIABLE = "FANFLOW_TEST_CRASH"


@task_postrun.connect
def _crash_after_merge(task: Any = None, retval: Any = None, **_: Any) -> None:
    if os.environ.get(CRASH_VARIABLE) != "after-merge" or getattr(task, "name", "") != "fanflow.merge":
        return
    if retval in ("succeeded", "partial", "failed"):  # it merged (not a duplicate that did nothing)
        os.kill(os.getpid(), signal.SIGKILL)
