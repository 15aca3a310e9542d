"""Publishing the header messages of a chord fast: Celery builds one message, the others are copies of it.

Celery's ``chord(...).apply_async()`` sends each header task through its whole publishing path
(cloning and freezing a signature, routing, serialising the chord body again, ``Producer.publish``,
one LPUSH round trip): half a millisecond to a millisecond of producer time per branch. The header
messages of a fan-out differ in a few fields only, so on a Redis broker this module builds the first
message with Celery's and kombu's own code (``app.amqp.as_task_v2``, kombu's serializer, the channel's
``prepare_message`` and envelope, exactly as kombu's Redis transport would LPUSH it) and derives every
other message from it, changing only what differs: the task id (``id``, ``root_id``,
``correlation_id``), the args, ``shadow``, ``argsrepr``, ``group_index``, the queue (list, delivery
info) and kombu's ``delivery_tag``. The messages are LPUSHed to kombu's queue lists (priority lists
and ``global_keyprefix`` honoured) through a pipeline, ``chunk_size`` messages per round trip. They
are ordinary protocol-2 task messages: a stock Celery worker cannot tell them from Celery's own.

Deliberate differences from Celery's publishing:

* no ``task-sent`` events (``task_send_sent_event``): Flower learns of a branch when a worker
  receives it;
* ``before_task_publish`` / ``after_task_publish`` are sent only when a receiver is connected (the
  latter once the message's chunk is in Redis); a receiver may change the headers and properties of a
  message, not its body;
* a chunk whose round trip fails with a connection error is sent again (``task_publish_retry``):
  a header message may then be queued twice, which the chord's join counts once;
* the properties do not repeat ``argsrepr`` / ``kwargsrepr`` (Celery copies every unknown option
  of a signature there; workers read them from the headers).

Any other broker (RabbitMQ), serializer, compression or routing (a named exchange) takes Celery's
normal ``apply_async`` path, one message at a time, with the same ids and contents.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import datetime
from typing import Any, NamedTuple

import redis
from celery import Celery
from celery.canvas import Signature
from celery.signals import after_task_publish, before_task_publish
from kombu.serialization import dumps as serialize
from kombu.transport import redis as kombu_redis
from kombu.utils.json import JSONEncoder

__all__ = ["CHUNK_SIZE", "ChordPart", "part_signature", "publish_parts"]

#: Messages per pipelined round trip.
CHUNK_SIZE = 1000
#: Header tasks take positional arguments only.
_KWARGSREPR = "{}"
_RETRYABLE = (redis.ConnectionError, redis.TimeoutError)


class ChordPart(NamedTuple):
    """One header task of a chord: what its message has of its own."""

    task_id: str
    args: tuple[Any, ...]
    queue: str
    shadow: str
    argsrepr: str
    group_index: int
    eta: str | None = None  # ISO 8601: the worker holds the message until then (submit-time pacing)


def part_signature(
    app: Celery, task_name: str, group_id: str, body: Signature | None, part: ChordPart
) -> Signature:
    """``part`` as a frozen Celery signature (task id, group, ``group_index``, chord body), ready to send."""
    signature = app.signature(
        task_name,
        args=part.args,
        queue=part.queue,
        ignore_result=True,
        shadow=part.shadow,
        argsrepr=part.argsrepr,
        kwargsrepr=_KWARGSREPR,
    )
    # Celery's chord freezes its header tasks with the body as their ``chord`` option.
    chord: Any = body
    signature.freeze(part.task_id, group_id=group_id, chord=chord, group_index=part.group_index)
    return signature


def publish_parts(
    app: Celery,
    task_name: str,
    group_id: str,
    body: Signature | None,
    parts: Sequence[ChordPart],
    *,
    chord_size: int | None = None,
    chunk_size: int = CHUNK_SIZE,
) -> None:
    """Publish ``parts`` as header tasks ``task_name`` of the chord ``group_id`` whose body is ``body``.

    With ``chord_size``, Celery's chord size is set first (this also clears the chord's "done"
    marker: only the first publication of a round may set it). ``body`` None: plain group members.
    """
    if chord_size is not None:
        app.backend.set_chord_size(group_id, chord_size)
    if not parts:
        return
    with app.producer_or_acquire() as producer:
        publisher = _RedisPublisher.create(app, producer, task_name, group_id, body, parts)
        if publisher is not None:
            publisher.publish(parts, max(1, chunk_size))
            return
        for part in parts:
            part_signature(app, task_name, group_id, body, part).apply_async(
                producer=producer,
                add_to_parent=False,
                eta=datetime.fromisoformat(part.eta) if part.eta is not None else None,
            )


class _Route(NamedTuple):
    """Where the messages of one queue go, and their envelope's constant part."""

    key: str  # the Redis list (before global_keyprefix, which the client adds)
    queue_name: str
    queue: Any  # kombu Queue, declared once
    exchange: str
    routing_key: str
    envelope: dict[str, Any]  # kombu's message dict for this queue (body, headers, properties)


class _Template(NamedTuple):
    """The first header message, as Celery and kombu build it, split into what the others share."""

    headers: dict[str, Any]
    body: tuple[Any, ...]  # (args, kwargs, embed)
    body_tail: str | None  # the serialized body after its args; None: serialize every body whole
    root_id: str | None  # None: each task is its own root
    routes: dict[str, _Route]  # by queue name


def _template(
    app: Celery,
    producer: Any,
    task_name: str,
    group_id: str,
    body: Signature | None,
    parts: Sequence[ChordPart],
) -> _Template | None:
    """The first message of ``parts``, as Celery's send_task and kombu's Redis channel build it.

    None on anything but a Redis broker with protocol 2, JSON and no compression.
    """
    conf = app.conf
    channel: Any = producer.channel
    on_redis = isinstance(channel, kombu_redis.Channel)  # (a flag: kombu's stubs lack the internals used)
    if not on_redis or int(conf.task_protocol) != 2:
        return None
    parent = app.current_worker_task  # as send_task: a task publishing is the parent
    if parent is not None and conf.task_inherit_parent_priority:
        return None
    root_id = parent_id = None
    if parent is not None:
        root_id = parent.request.root_id or parent.request.id
        parent_id = parent.request.id
    task_type: Any = app.tasks.get(task_name)
    exec_options: dict[str, Any] = task_type._get_exec_options() if task_type is not None else {}
    serializer = exec_options.get("serializer") or conf.task_serializer
    compressed = exec_options.get("compression") or conf.task_compression
    if serializer != "json" or compressed or exec_options.get("expires") is not None:
        return None  # (an expiry is a time of each message's own)
    first = parts[0]
    headers, properties, message_body, _ = app.amqp.as_task_v2(
        first.task_id, task_name, first.args, {},
        group_id=group_id, group_index=first.group_index, chord=body,
        reply_to=app.thread_oid, create_sent_event=False, root_id=root_id, parent_id=parent_id,
        shadow=first.shadow, ignore_result=True, argsrepr=first.argsrepr, kwargsrepr=_KWARGSREPR,
        time_limit=exec_options.get("time_limit"), soft_time_limit=exec_options.get("soft_time_limit"),
    )  # fmt: skip
    content_type, content_encoding, data = serialize(message_body, serializer=serializer)
    head = "[" + JSONEncoder().encode(list(first.args))
    routes: dict[str, _Route] = {}
    for queue_name in dict.fromkeys(part.queue for part in parts):
        options = app.amqp.router.route(
            dict(exec_options, queue=queue_name), task_name, first.args, {}, task_type
        )
        queue = options.get("queue") or app.amqp.default_queue
        # send_task_message: a direct exchange without both names set goes by the queue's name.
        exchange_type = options.get("exchange_type") or queue.exchange.type
        if (options.get("exchange") and options.get("routing_key")) or exchange_type != "direct":
            return None  # a named exchange: kombu looks its bindings up; Celery's path does that
        delivery_mode = options.get("delivery_mode") or queue.exchange.delivery_mode
        _, delivery_mode = producer._delivery_details(
            producer.exchange, delivery_mode or conf.task_default_delivery_mode
        )
        message = channel.prepare_message(
            data, options.get("priority") or 0, content_type, content_encoding, dict(headers),
            {**properties, "delivery_mode": delivery_mode},
        )  # fmt: skip
        channel._inplace_augment_message(message, "", queue.name)
        priority = channel._get_message_priority(message, reverse=False)
        key = channel._q_for_pri(queue.name, priority)
        routes[queue_name] = _Route(key, queue.name, queue, "", queue.name, message)
    return _Template(
        headers=headers,
        body=message_body,
        body_tail=data[len(head) :] if data.startswith(head) else None,
        root_id=root_id,
        routes=routes,
    )


class _RedisPublisher:
    """Builds header messages from one template and LPUSHes them in pipelined chunks."""

    def __init__(self, app: Celery, producer: Any, task_name: str, template: _Template) -> None:
        self.producer = producer
        self.channel: Any = producer.channel
        self.task_name = task_name
        self.template = template
        self.encode = JSONEncoder().encode  # kombu's json.dumps, without a new encoder per call
        self.retry: bool = bool(app.conf.task_publish_retry)
        self.retry_policy: dict[str, Any] = dict(app.conf.task_publish_retry_policy or {})

    @classmethod
    def create(
        cls,
        app: Celery,
        producer: Any,
        task_name: str,
        group_id: str,
        body: Signature | None,
        parts: Sequence[ChordPart],
    ) -> _RedisPublisher | None:
        """A publisher for ``parts`` on ``producer``'s channel; None where only Celery's path will do."""
        template = _template(app, producer, task_name, group_id, body, parts)
        return None if template is None else cls(app, producer, task_name, template)

    def publish(self, parts: Sequence[ChordPart], chunk_size: int) -> None:
        """Build every message and LPUSH them, ``chunk_size`` per round trip."""
        for route in self.template.routes.values():
            self.producer.maybe_declare(route.queue, retry=self.retry, **self.retry_policy)
        before = bool(before_task_publish.receivers)
        after = bool(after_task_publish.receivers)
        batch: dict[str, list[str]] = {}
        sent: list[tuple[tuple[Any, ...], dict[str, Any], _Route]] = []
        pending = 0
        for part in parts:
            route = self.template.routes[part.queue]
            payload, body, headers = self._message(part, route, before)
            batch.setdefault(route.key, []).append(payload)
            if after:
                sent.append((body, headers, route))
            pending += 1
            if pending >= chunk_size:
                self._flush(batch, sent)
                batch, sent, pending = {}, [], 0
        if pending:
            self._flush(batch, sent)

    def _message(
        self, part: ChordPart, route: _Route, signal: bool
    ) -> tuple[str, tuple[Any, ...], dict[str, Any]]:
        """The serialized message of ``part`` (and its body and headers, for the publish signals)."""
        task_id = part.task_id
        args = list(part.args)
        if self.template.body_tail is not None:
            data = "[" + self.encode(args) + self.template.body_tail
            body = (args, *self.template.body[1:])
        else:
            body = (args, *self.template.body[1:])
            data = serialize(body, serializer="json")[2]
        headers = dict(self.template.headers)
        headers["id"] = task_id
        headers["root_id"] = self.template.root_id or task_id
        headers["shadow"] = part.shadow
        headers["group_index"] = part.group_index
        headers["argsrepr"] = part.argsrepr
        if part.eta is not None:
            headers["eta"] = part.eta
        envelope = dict(route.envelope)
        properties = dict(envelope["properties"])
        properties["correlation_id"] = task_id
        if signal:
            sent_properties = {"correlation_id": task_id, "reply_to": properties["reply_to"]}
            before_task_publish.send(
                sender=self.task_name, body=body, exchange=route.exchange, routing_key=route.routing_key,
                declare=[route.queue], headers=headers, properties=sent_properties,
                retry_policy=self.retry_policy,
            )  # fmt: skip
            properties.update(sent_properties)
        properties["delivery_info"] = {"exchange": route.exchange, "routing_key": route.routing_key}
        properties["delivery_tag"] = self.channel._next_delivery_tag()
        envelope["body"] = self.channel.encode_body(data, self.channel.body_encoding)[0]
        envelope["headers"] = headers
        envelope["properties"] = properties
        return self.encode(envelope), body, headers

    def _flush(
        self, batch: dict[str, list[str]], sent: list[tuple[tuple[Any, ...], dict[str, Any], _Route]]
    ) -> None:
        """LPUSH one chunk in one round trip (again after a connection error, as the retry policy says)."""
        channel = self.channel
        expires: dict[str, int] = channel._expires or {}
        queues = {route.key: route.queue_name for route in self.template.routes.values()}
        policy = self.retry_policy
        max_retries = int(policy.get("max_retries") or 0) if self.retry else 0
        interval = float(policy.get("interval_start", 0))
        for attempt in range(max_retries + 1):
            try:
                with channel.conn_or_acquire() as client:
                    pipe = client.pipeline(transaction=False)
                    for key, payloads in batch.items():
                        pipe.lpush(key, *payloads)
                        queue = queues[key]
                        if queue in expires:
                            for priority in channel.priority_steps:
                                pipe.pexpire(channel._q_for_pri(queue, priority), expires[queue])
                    pipe.execute()
                break
            except _RETRYABLE:
                if attempt >= max_retries:
                    raise
                time.sleep(interval)
                interval = min(
                    interval + float(policy.get("interval_step", 0.2)), float(policy.get("interval_max", 1))
                )
        for body, headers, route in sent:
            after_task_publish.send(
                sender=self.task_name, body=body, headers=headers,
                exchange=route.exchange, routing_key=route.routing_key,
            )  # fmt: skip
