"""kombu's Redis transport, reusing one client object per channel for its commands.

kombu's Redis channel builds a new ``redis.Redis`` object for every publish (``conn_or_acquire``);
with redis-py 8 that constructor alone costs about half a millisecond (it fills a table of
response callbacks), more than the LPUSH it wraps. The client objects all share the channel's
connection pool, so one of them serves as well as a new one per command. Selected through Celery's
``broker_transport`` setting (kombu refuses import paths inside URLs).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from kombu.transport import redis as kombu_redis

__all__ = ["Channel", "Transport", "transport_for"]


class Channel(kombu_redis.Channel):
    """A kombu Redis channel whose synchronous commands share one client object."""

    _shared_client: Any = None

    @contextmanager
    def conn_or_acquire(self, client: Any = None) -> Iterator[Any]:
        """The given client, else this channel's shared client (rebuilt if the pool was replaced)."""
        if client:
            yield client
            return
        shared = self._shared_client
        if shared is None or shared.connection_pool is not self.pool:
            shared = self._shared_client = self._create_client()  # type: ignore[attr-defined]
        yield shared


class Transport(kombu_redis.Transport):
    """kombu's Redis transport with ``Channel`` above."""

    Channel = Channel


def transport_for(broker_url: str | None) -> str | None:
    """Celery's ``broker_transport`` for a broker URL: this transport for redis:// and rediss://.

    None (the URL's own scheme decides) for every other broker.
    """
    if broker_url is None or not broker_url.startswith(("redis://", "rediss://")):
        return None
    return f"{Transport.__module__}:{Transport.__name__}"
