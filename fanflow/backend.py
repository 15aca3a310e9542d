"""Celery's Redis result backend, without the producer-side result subscriptions.

fanflow reads results from its own job store, never through ``AsyncResult``; Celery's backend
would still SUBSCRIBE the producer to every task's result channel (one command per branch, and a
pub/sub connection that complains when it is torn down at interpreter exit). Everything else
(chord joins on the worker side, the chord size key) is Celery's own code.
"""

from __future__ import annotations

from typing import Any

from celery.backends.redis import RedisBackend

__all__ = ["ResultBackend", "backend_url"]


class ResultBackend(RedisBackend):
    """``RedisBackend`` whose producers do not subscribe to task results."""

    def on_task_call(self, producer: Any, task_id: str) -> None:
        """Do not subscribe: fanflow never waits on a Celery result."""

    def apply_chord(self, header_result_args: Any, body: Any, **kwargs: Any) -> None:
        """Nothing to save: fanflow's chord headers are flat lists of tasks.

        Celery's version builds a ``GroupResult`` only to look for nested groups, and that object
        subscribes the producer to every header task's result channel.
        """


def backend_url(url: str | None) -> str | None:
    """The Celery ``result_backend`` value selecting ``ResultBackend`` for a redis:// URL."""
    if url is None or not url.startswith(("redis://", "rediss://")):
        return url
    return f"{ResultBackend.__module__}:{ResultBackend.__name__}+{url}"
