"""Poison messages: a message on a fanflow queue that is not a well-formed task is rejected, never run.

Celery parses a task message in the worker's consumer thread, and an exception there is not
caught: a body that is not ``[args, kwargs, embed]`` (an object, a string, a number, ``null``, a
list of four) stops the worker with ``Unrecoverable error`` (``celery/worker/strategy.py`` and
``Request.__init__`` in ``celery/worker/request.py``). The message was not acknowledged, so the
broker gives it back and every restarted worker dies on it again, while every other job waits. A
body of ``[1, 2, 3]`` gets further: it fails in the pool thread before the task runs, is never
acknowledged and holds a prefetch slot for good. A body of the right shape with arguments of the
wrong types runs the task with them, and Celery's own handlers for an unknown task name, a refused
content type or a body that does not decode log the whole message, payload included.

``PoisonGuard``, a consumer bootstep, puts ``screen_message`` in front of Celery's task handler:
before Celery sees a message, its headers, content type, body shape and argument types are
checked. A message that fails is logged as one line (task name, id, queue, why; never the
payload), acknowledged, and reported to the job it names, if that job exists: a ``poison`` event
in its event stream and ``poison`` counted in its meta hash, never an outcome, so a forged
message cannot fail a real branch. Whatever still raises inside Celery's handler is handled the
same way instead of stopping the worker. Items that are not even kombu messages are dropped
earlier, by the transport (``fanflow.transport``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Container, Mapping
from dataclasses import dataclass, replace
from typing import Any, cast

import redis
from celery import bootsteps, signals
from celery.utils.time import maybe_iso8601

from fanflow.errors import PoisonMessageError
from fanflow.keys import JobKeys
from fanflow.store import EVENTS_MAXLEN, JobStore
from fanflow.tasks import BATCH_TASK, MERGE_TASK, NODE_TASK, SUBTASK_TASK

__all__ = [
    "TASK_PARAMETERS",
    "PoisonGuard",
    "Rejection",
    "check_headers",
    "check_task_body",
    "claimed_job",
    "notify_job",
    "printable",
    "screen_message",
]

logger = logging.getLogger("fanflow")

#: fanflow's tasks: their positional parameters and types (``object``: any JSON value).
#: They take no keyword arguments. Any other registered task gets the generic checks only.
TASK_PARAMETERS: dict[str, tuple[tuple[str, type], ...]] = {
    SUBTASK_TASK: (("job_id", str), ("key", str), ("round_", int)),
    NODE_TASK: (("job_id", str), ("key", str), ("round_", int)),
    BATCH_TASK: (("job_id", str), ("keys", list), ("round_", int)),
    MERGE_TASK: (("statuses", object), ("job_id", str), ("round_", int)),
}
#: The only content type fanflow's apps accept (``accept_content=["json"]``).
JSON = "application/json"
#: What the third item of a task body may hold, as Celery's ``as_task_v2`` writes it.
_EMBED_FIELDS: dict[str, type] = {"callbacks": list, "errbacks": list, "chain": list, "chord": dict}
_STRING_HEADERS = ("shadow", "root_id", "parent_id", "group", "argsrepr", "kwargsrepr")
_JSON_TYPES = {dict: "an object", list: "an array", str: "a string", int: "a number", float: "a number",
               bool: "a boolean", type(None): "null"}  # fmt: skip
_MAX_JOB_ID = 200


def json_type(value: object) -> str:
    """``value``'s JSON type, for a reason that never shows the value itself."""
    return _JSON_TYPES.get(type(value), type(value).__name__)


def printable(value: object, limit: int = 80) -> str:
    """``value`` for one log line: control characters replaced, cut at ``limit`` characters."""
    if value is None:
        return "-"
    text = "".join(char if char.isprintable() else "?" for char in str(value)[: limit + 1])
    return text if len(text) <= limit else text[:limit] + "..."


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_headers(headers: object) -> None:
    """Check the headers Celery reads while it accepts a message (protocol 2).

    Raises:
        PoisonMessageError: a header is missing or of the wrong type (the message says which).
    """
    if not isinstance(headers, Mapping):
        raise PoisonMessageError("headers are not a mapping")
    for name in ("task", "id"):
        if not isinstance(headers.get(name), str) or not headers[name]:
            raise PoisonMessageError(f"no {name} header (not a Celery protocol 2 task message)")
    for name in _STRING_HEADERS:
        if not isinstance(headers.get(name), str | None):
            raise PoisonMessageError(f"header {name} is {json_type(headers[name])}, expected a string")
    for name in ("eta", "expires"):
        value = headers.get(name)
        try:
            if value is not None and (not isinstance(value, str) or maybe_iso8601(value) is None):
                raise ValueError(name)
        except (ValueError, TypeError, OverflowError) as exc:
            raise PoisonMessageError(f"header {name} is not an ISO 8601 time") from exc
    limits = headers.get("timelimit")
    if limits is not None and not (
        isinstance(limits, list | tuple)
        and len(limits) == 2
        and all(limit is None or (isinstance(limit, int | float) and not isinstance(limit, bool))
                for limit in limits)
    ):  # fmt: skip
        raise PoisonMessageError("header timelimit is not [hard, soft] seconds")
    retries = headers.get("retries")
    if retries is not None and not (_is_int(retries) and retries >= 0):
        raise PoisonMessageError("header retries is not a count")
    if not isinstance(headers.get("ignore_result"), bool | None):
        raise PoisonMessageError("header ignore_result is not a boolean")


def check_task_body(task: str, body: object) -> None:
    """Check a decoded task body: ``[args, kwargs, embed]``, and for fanflow's tasks the arguments.

    Raises:
        PoisonMessageError: the body is malformed (the message says how, never with its values).
    """
    if not isinstance(body, list | tuple):
        raise PoisonMessageError(f"body is {json_type(body)}, expected [args, kwargs, embed]")
    if len(body) != 3:
        raise PoisonMessageError(f"body has {len(body)} items, expected [args, kwargs, embed]")
    args, kwargs, embed = body
    if not isinstance(args, list | tuple):
        raise PoisonMessageError(f"args is {json_type(args)}, expected an array")
    if not isinstance(kwargs, dict):
        raise PoisonMessageError(f"kwargs is {json_type(kwargs)}, expected an object")
    _check_embed(embed)
    parameters = TASK_PARAMETERS.get(task)
    if parameters is None:
        return
    if kwargs:
        raise PoisonMessageError(f"{len(kwargs)} unexpected keyword argument(s)")
    if len(args) != len(parameters):
        names = ", ".join(name for name, _ in parameters)
        raise PoisonMessageError(f"{len(args)} argument(s), expected {len(parameters)} ({names})")
    for value, (name, expected) in zip(args, parameters, strict=True):
        if expected is int and not (_is_int(value) and value >= 0):
            raise PoisonMessageError(f"{name} is {json_type(value)}, expected an integer >= 0")
        if expected is str and not isinstance(value, str):
            raise PoisonMessageError(f"{name} is {json_type(value)}, expected a string")
        if expected is list and not (
            isinstance(value, list) and all(isinstance(item, str) for item in value)
        ):
            raise PoisonMessageError(f"{name} is {json_type(value)}, expected an array of strings")


def _check_embed(embed: object) -> None:
    if embed is None:
        return
    if not isinstance(embed, dict):
        raise PoisonMessageError(f"embed is {json_type(embed)}, expected an object")
    for name, value in embed.items():
        expected = _EMBED_FIELDS.get(name)
        if expected is None:
            raise PoisonMessageError("embed has an unknown field")
        if value is not None and not isinstance(value, expected):
            raise PoisonMessageError(f"embed {name} is {json_type(value)}")


def claimed_job(task: str | None, body: object) -> str | None:
    """The job id a task body names (for fanflow's tasks, their ``job_id`` argument; else args[0])."""
    if not isinstance(body, list | tuple) or not body or not isinstance(body[0], list | tuple):
        return None
    names = [name for name, _ in TASK_PARAMETERS.get(task or "", ())]
    position = names.index("job_id") if "job_id" in names else 0
    args = body[0]
    job_id = args[position] if len(args) > position else None
    return job_id if isinstance(job_id, str) and 0 < len(job_id) <= _MAX_JOB_ID else None


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why a message was rejected, and what it claimed to be (all of it from the message)."""

    reason: str
    task: str | None = None
    task_id: str | None = None
    queue: str | None = None
    job_id: str | None = None


def screen_message(message: Any, known_tasks: Container[str]) -> Rejection | None:
    """None if ``message`` (a kombu message) is a well-formed task of ``known_tasks``, else why not.

    Only a JSON body is decoded (to check it, and to find the job a rejected message names);
    that costs nothing extra: kombu keeps the decoded body for Celery's handler.
    """
    headers = message.headers if isinstance(message.headers, Mapping) else {}
    task = headers.get("task")
    delivery = message.delivery_info if isinstance(message.delivery_info, Mapping) else {}
    claim = Rejection("", task=printable(task), task_id=printable(headers.get("id")),
                      queue=delivery.get("routing_key"))  # fmt: skip
    body: object = None
    decode_error = None
    if message.content_type == JSON:
        try:
            body = message.decode()
        except Exception as exc:  # noqa: BLE001 - a body that does not decode makes the message poison
            decode_error = type(exc).__name__
    try:
        check_headers(message.headers)
        if task not in known_tasks:
            raise PoisonMessageError("unknown task")
        if message.content_type != JSON:
            raise PoisonMessageError(f"content type {printable(message.content_type, 40)} refused")
        if decode_error is not None:
            raise PoisonMessageError(f"body does not decode ({decode_error})")
        check_task_body(str(task), body)
    except PoisonMessageError as exc:
        return replace(claim, reason=str(exc), job_id=claimed_job(task, body))
    return None


def notify_job(store: JobStore, rejection: Rejection) -> bool:
    """Tell the job ``rejection`` names, if it exists: a ``poison`` event and ``poison`` counted in meta.

    Returns whether a job was told. Never writes an outcome, and creates no key.
    """
    if rejection.job_id is None:
        return False
    keys = JobKeys.of(store.prefix, rejection.job_id)
    event = {"type": "poison", "task": rejection.task or "-", "id": rejection.task_id or "-",
             "reason": rejection.reason}  # fmt: skip

    def tell(pipe: Any) -> bool:
        if not pipe.exists(keys.meta):  # watched: it cannot expire between here and EXEC
            return False
        pipe.multi()
        pipe.hincrby(keys.meta, "poison", 1)
        pipe.xadd(keys.events, event, maxlen=EVENTS_MAXLEN, nomkstream=True)
        return True

    # WATCH/MULTI (retried by redis-py if meta changes meanwhile): never HINCRBY a meta that expired.
    return bool(store.client.transaction(cast(Any, tell), keys.meta, value_from_callable=True))


def reject(consumer: Any, message: Any, rejection: Rejection) -> None:
    """Log ``rejection`` as one line, tell its job, acknowledge the message."""
    logger.warning(
        "fanflow: poison message rejected: task=%s id=%s queue=%s job=%s reason=%s",
        rejection.task, rejection.task_id, printable(rejection.queue), printable(rejection.job_id),
        rejection.reason,
    )  # fmt: skip
    store: JobStore | None = getattr(consumer.app, "fanflow_store", None)
    if store is not None:
        try:
            notify_job(store, rejection)
        except redis.RedisError as exc:
            logger.warning("fanflow: could not report a poison message to its job: %s", type(exc).__name__)
    if not message.acknowledged:
        message.ack_log_error(logger, consumer.connection_errors)
    signals.task_rejected.send(sender=consumer, message=message, exc=PoisonMessageError(rejection.reason))


def guard(consumer: Any, handler: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """``handler`` (Celery's ``on_task_received``) behind ``screen_message``."""
    connection_errors = tuple(consumer.connection_errors)

    def on_task_received(message: Any) -> Any:
        rejection = screen_message(message, consumer.app.tasks)
        if rejection is None:
            try:
                return handler(message)
            except connection_errors:
                raise  # the consumer reconnects; the message comes back
            except Exception as exc:  # noqa: BLE001 - raising here would stop the whole worker
                task = message.headers.get("task")
                rejection = Rejection(
                    f"the worker could not accept it ({type(exc).__name__})",
                    task=printable(task), task_id=printable(message.headers.get("id")),
                    queue=(message.delivery_info or {}).get("routing_key"),
                    job_id=claimed_job(task, message.payload),  # decoded, and kept, by screen_message
                )  # fmt: skip
        reject(consumer, message, rejection)
        return None

    return on_task_received


class PoisonGuard(bootsteps.Step):
    """Consumer bootstep: every task message passes ``screen_message`` before Celery's handler.

    Registered by ``create_app`` (``app.steps["consumer"]``). Celery builds its task handler each
    time the consumer (re)starts its event loop; the handler built is wrapped each time.
    """

    def __init__(self, consumer: Any, **kwargs: Any) -> None:
        super().__init__(consumer, **kwargs)
        create_task_handler = consumer.create_task_handler

        def guarded_task_handler(*args: Any, **kwargs: Any) -> Callable[[Any], Any]:
            return guard(consumer, create_task_handler(*args, **kwargs))

        consumer.create_task_handler = guarded_task_handler
