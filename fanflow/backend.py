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

    def add_pending_result(self, result: Any, weak: bool = False, start_drainer: bool = True) -> Any:
        """Track nothing: fanflow never waits on a Celery result.

        Celery's error callbacks are sent as a group whose result "waits" on its parts: with the
        stock backend that starts a pub/sub drainer in the worker, and the result objects'
        finalizers then retry a lost Redis for 20 s at interpreter exit.
        """
        return result

    def add_pending_results(self, results: Any, weak: bool = False) -> Any:
        """Track nothing (see ``add_pending_result``)."""
        return list(results)

    def remove_pending_result(self, result: Any) -> Any:
        """Nothing was tracked."""
        return result

    def _set(self, key: str, value: Any, expires: Any = None) -> None:
        """Celery's ``_set`` with ``SET ... EX`` instead of ``SETEX`` (deprecated in redis-py 8).

        Celery stores a chord body's failure through it when a header task fails; the
        ``DeprecationWarning`` it raised there broke that path wherever warnings are errors.
        """
        if expires is None:
            expires = self.expires  # type: ignore[attr-defined]
        with self.client.pipeline() as pipe:
            pipe.set(key, value, ex=int(expires) if expires else None)
            pipe.publish(key, value)
            pipe.execute()

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
