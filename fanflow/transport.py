"""kombu's Redis transport, reusing one client object per channel for its commands.

kombu's Redis channel builds a new ``redis.Redis`` object for every publish (``conn_or_acquire``);
with redis-py 8 that constructor alone costs about half a millisecond (it fills a table of
response callbacks), more than the LPUSH it wraps. The client objects all share the channel's
connection pool, so one of them serves as well as a new one per command. Selected through Celery's
``broker_transport`` setting (kombu refuses import paths inside URLs).

The channel also screens every item its BRPOP pops. kombu decodes the item as JSON and builds a
message from it in the worker's consumer thread, without catching anything: an item that is not
JSON, or not kombu's message envelope, stops the worker with ``Unrecoverable error``. Such an item
is logged as one line and dropped (it was popped and never reached kombu's unacked hash); task
messages with a malformed task inside are the consumer's business (``fanflow.poison``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from functools import partial
from typing import Any

import redis
from kombu.transport import redis as kombu_redis
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import loads

__all__ = ["Channel", "Transport", "envelope_problem", "transport_for"]

logger = logging.getLogger("fanflow")
_ROUTE = ("exchange", "routing_key")


def envelope_problem(item: bytes | str, codecs: Mapping[str, Any]) -> str | None:
    """None if ``item`` is a message envelope kombu's Redis channel can deliver, else why not.

    Checks what ``_brpop_read``, ``virtual.Message`` and the unacked bookkeeping read from it,
    decoding exactly as kombu does (its JSON hooks included). ``codecs``: the channel's body codecs.
    """
    try:
        payload = loads(bytes_to_str(item))
    except Exception as exc:  # noqa: BLE001 - whatever kombu's decoding raises, the item is not a message
        return f"not a kombu message: not JSON ({type(exc).__name__})"
    if not isinstance(payload, dict):
        return "not a kombu message: not a JSON object"
    properties = payload.get("properties")
    if not isinstance(properties, dict):
        return "not a kombu message: no properties"
    if not isinstance(properties.get("delivery_tag"), str) or not properties["delivery_tag"]:
        return "not a kombu message: no delivery tag"
    delivery = properties.get("delivery_info")
    # Both keys must be there (kombu indexes them when it records the message as unacked).
    if not isinstance(delivery, dict) or not all(isinstance(delivery.get(k, 0), str | None) for k in _ROUTE):
        return "not a kombu message: no delivery info"
    if not all(isinstance(payload.get(name), str | None) for name in ("content-type", "content-encoding")):
        return "not a kombu message: content type or encoding is not a string"
    if not isinstance(payload.get("headers"), dict | None):
        return "not a kombu message: headers are not an object"
    body, encoding = payload.get("body"), properties.get("body_encoding")
    if not isinstance(body, str | None) or not isinstance(encoding, str | None):
        return "not a kombu message: body or body encoding is not a string"
    if body and encoding and encoding.lower() != "utf-8":
        if encoding not in codecs:
            return "not a kombu message: unknown body encoding"
        try:
            codecs[encoding].decode(body)
        except Exception as exc:  # noqa: BLE001 - kombu would raise the same while building the message
            return f"not a kombu message: body does not decode ({type(exc).__name__})"
    return None


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
        pool = self._pool  # type: ignore[attr-defined]
        # A closing channel has dropped its pool and its connection (kombu then restores its
        # unacked messages through this method): its last client still reaches Redis, while
        # building a new one would fail inside kombu on the missing connection.
        if shared is None or (pool is not None and shared.connection_pool is not pool):
            try:
                shared = self._shared_client = self._create_client()
            except AttributeError as exc:  # the connection is gone: kombu's recovery handles this
                raise redis.ConnectionError("the broker channel was closed") from exc
        yield shared

    def _create_client(self, asynchronous: bool = False) -> Any:
        """kombu's client; the asynchronous one (it runs the consumer's BRPOP) screens what it pops."""
        client = super()._create_client(asynchronous)  # type: ignore[misc]
        if asynchronous:
            parse = client.response_callbacks.get("BRPOP")
            client.set_response_callback("BRPOP", partial(self._screen_brpop_reply, parse))
        return client

    def _screen_brpop_reply(self, parse: Callable[..., Any] | None, response: Any, **options: Any) -> Any:
        """A BRPOP reply as redis-py parses it, or None (kombu: nothing popped) for a poison item."""
        reply = parse(response, **options) if parse is not None else response
        if not reply:
            return reply
        queue, item = reply
        problem = envelope_problem(item, self.codecs)
        if problem is None:
            return reply
        name = bytes_to_str(queue).rsplit(self.sep, 1)[0]
        logger.warning(
            "fanflow: poison message rejected: task=- id=- queue=%s job=- reason=%s",
            "".join(char if char.isprintable() else "?" for char in name[:80]), problem,
        )  # fmt: skip
        return None


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
