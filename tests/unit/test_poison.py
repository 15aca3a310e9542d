"""Poison-message checks, without Redis: task bodies, headers, whole kombu messages, envelopes."""

from __future__ import annotations

import base64
import inspect
import json
from typing import Any
from unittest import mock

import pytest
from celery import Celery
from kombu.message import Message
from kombu.transport.virtual.base import Base64

from fanflow.errors import PoisonMessageError
from fanflow.poison import (
    TASK_PARAMETERS,
    check_headers,
    check_task_body,
    claimed_job,
    guard,
    printable,
    screen_message,
)
from fanflow.tasks import BATCH_TASK, MERGE_TASK, NODE_TASK, SUBTASK_TASK, register_tasks
from fanflow.transport import envelope_problem

EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
KNOWN = {SUBTASK_TASK, MERGE_TASK, "bench.noop"}


def _task_message(name: str, args: tuple[Any, ...], **options: Any) -> tuple[dict[str, Any], Any]:
    """Headers and body of a task message exactly as Celery composes them (protocol 2)."""
    app = Celery(set_as_current=False)
    message = app.amqp.as_task_v2("3f1c-id", name, args=args, kwargs={}, **options)
    return dict(message.headers), message.body


def _kombu_message(body: Any, headers: dict[str, Any], content_type: str = "application/json") -> Message:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return Message(
        body=raw, content_type=content_type, content_encoding="utf-8", headers=headers,
        delivery_info={"exchange": "", "routing_key": "fanflow.py"}, accept={"application/json"},
        channel=mock.Mock(), delivery_tag="tag-1",
    )  # fmt: skip


@pytest.mark.parametrize(
    ("task", "body"),
    [
        (SUBTASK_TASK, [["job", "key", 0], {}, EMBED]),
        (SUBTASK_TASK, [["job", "key", 3], {}, {"chord": {"task": MERGE_TASK}, "callbacks": []}]),
        (SUBTASK_TASK, (("job", "key", 0), {}, None)),
        (MERGE_TASK, [[["succeeded", "failed"], "job", 1], {}, EMBED]),
        (MERGE_TASK, [[None, "job", 0], {}, {}]),  # the sweeper's call
        (MERGE_TASK, [["4b1e-task-id", "job", 0], {}, {}]),  # as the chord's error callback
        ("bench.noop", [[], {"any": "kwargs"}, EMBED]),  # not fanflow's: the body's shape only
        (BATCH_TASK, [["job", ["a", "b"], 0], {}, EMBED]),
        (NODE_TASK, [["job", "node", 1], {}, EMBED]),
    ],
)
def test_well_formed_bodies_pass(task: str, body: Any) -> None:
    check_task_body(task, body)


@pytest.mark.parametrize(
    ("task", "body", "reason"),
    [
        (SUBTASK_TASK, {"args": ["job", "key", 0]}, "body is an object"),
        (SUBTASK_TASK, "job", "body is a string"),
        (SUBTASK_TASK, 7, "body is a number"),
        (SUBTASK_TASK, None, "body is null"),
        (SUBTASK_TASK, [["job", "key", 0], {}, {}, {}], "body has 4 items"),
        (SUBTASK_TASK, [1, 2, 3], "args is a number"),
        (SUBTASK_TASK, [["job", "key", 0], [], {}], "kwargs is an array"),
        (SUBTASK_TASK, [["job", "key", 0], {}, 3], "embed is a number"),
        (SUBTASK_TASK, [["job", "key", 0], {}, {"args": []}], "embed has an unknown field"),
        (SUBTASK_TASK, [["job", "key", 0], {}, {"chord": "merge"}], "embed chord is a string"),
        (SUBTASK_TASK, [["a", 1, "x"], {}, {}], "key is a number, expected a string"),
        (SUBTASK_TASK, [[1, "key", 0], {}, {}], "job_id is a number"),
        (SUBTASK_TASK, [["job", "key", "0"], {}, {}], "round_ is a string"),
        (SUBTASK_TASK, [["job", "key", 0.0], {}, {}], "round_ is a number, expected an integer"),
        (SUBTASK_TASK, [["job", "key", True], {}, {}], "round_ is a boolean"),
        (SUBTASK_TASK, [["job", "key", -1], {}, {}], "expected an integer >= 0"),
        (SUBTASK_TASK, [["job", "key"], {}, {}], "2 argument(s), expected 3 (job_id, key, round_)"),
        (SUBTASK_TASK, [["job", "key", 0], {"x": 1}, {}], "1 unexpected keyword argument(s)"),
        (MERGE_TASK, [[None, None, 0], {}, {}], "job_id is null"),
        (MERGE_TASK, [["job", 0], {}, {}], "2 argument(s)"),
        ("bench.noop", [[], None, {}], "kwargs is null"),
        (BATCH_TASK, [["job", "a", 0], {}, {}], "keys is a string, expected an array of strings"),
        (BATCH_TASK, [["job", ["a", 1], 0], {}, {}], "keys is an array, expected an array of strings"),
    ],
)
def test_malformed_bodies_are_poison(task: str, body: Any, reason: str) -> None:
    with pytest.raises(PoisonMessageError) as caught:
        check_task_body(task, body)
    assert reason in str(caught.value)


def test_reasons_never_show_the_values() -> None:
    secret = "sk-live-secret"
    for body in (
        [[secret, 1, 0], {}, {}],
        [[secret, "k", 0], {secret: secret}, {}],
        {secret: secret},
        secret,
    ):
        with pytest.raises(PoisonMessageError) as caught:
            check_task_body(SUBTASK_TASK, body)
        assert secret not in str(caught.value)


@pytest.mark.parametrize(
    ("task", "body", "job"),
    [
        (SUBTASK_TASK, [["job-1", 1, "x"], {}, {}], "job-1"),
        (SUBTASK_TASK, [["job-1", "k", 0], {}, {}, {}], "job-1"),
        (MERGE_TASK, [[None, "job-2", "0"], {}, {}], "job-2"),
        ("fanflow.unknown", [["job-3"], {}, {}], "job-3"),
        (None, [["job-4"], {}, {}], "job-4"),
        (SUBTASK_TASK, [[1, "k", 0], {}, {}], None),
        (SUBTASK_TASK, [[], {}, {}], None),
        (SUBTASK_TASK, [["", "k", 0], {}, {}], None),
        (SUBTASK_TASK, [["x" * 201, "k", 0], {}, {}], None),
        (SUBTASK_TASK, {"job_id": "job-1"}, None),
        (SUBTASK_TASK, [1, 2, 3], None),
        (SUBTASK_TASK, None, None),
    ],
)
def test_claimed_job(task: str | None, body: Any, job: str | None) -> None:
    assert claimed_job(task, body) == job


def test_celerys_own_headers_pass() -> None:
    headers, _ = _task_message(SUBTASK_TASK, ("job", "key", 0), countdown=5, expires=60, time_limit=30,
                               shadow="fanflow.subtask[job:key]", argsrepr="(job=job, key=key)")  # fmt: skip
    assert headers["eta"] and headers["expires"]
    check_headers(headers)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"task": None}, "no task header"),
        ({"id": ""}, "no id header"),
        ({"id": 5}, "no id header"),
        ({"shadow": 1}, "header shadow is a number"),
        ({"eta": "tomorrow"}, "header eta is not an ISO 8601 time"),
        ({"eta": ""}, "header eta is not an ISO 8601 time"),
        ({"expires": 1700000000}, "header expires is not an ISO 8601 time"),
        ({"timelimit": [1, 2, 3]}, "header timelimit"),
        ({"timelimit": [True, None]}, "header timelimit"),
        ({"retries": -1}, "header retries"),
        ({"retries": "2"}, "header retries"),
        ({"ignore_result": "yes"}, "header ignore_result"),
    ],
)
def test_malformed_headers_are_poison(change: dict[str, Any], reason: str) -> None:
    headers, _ = _task_message(SUBTASK_TASK, ("job", "key", 0))
    with pytest.raises(PoisonMessageError) as caught:
        check_headers({**headers, **change})
    assert reason in str(caught.value)


def test_screen_message_passes_a_real_task_message_and_keeps_its_decoded_body() -> None:
    headers, body = _task_message(SUBTASK_TASK, ("job", "key", 0))
    message = _kombu_message(body, headers)
    assert screen_message(message, KNOWN) is None
    assert message.payload == [["job", "key", 0], {}, EMBED]  # decoded once, kept for Celery


@pytest.mark.parametrize(
    ("body", "headers", "content_type", "reason", "job"),
    [
        ([["job", 1, 0], {}, {}], {}, "application/json", "key is a number", "job"),
        ([["job", "k", 0], {}, {}], {"task": "no.such"}, "application/json", "unknown task", "job"),
        (b"\x80\x04pickled", {}, "application/x-python-serialize", "content type", None),
        (b"{not json", {}, "application/json", "body does not decode", None),
        ([["job", "k", 0], {}, {}], {"id": None}, "application/json", "no id header", "job"),
    ],
)
def test_screen_message_rejects(
    body: Any, headers: dict[str, Any], content_type: str, reason: str, job: str | None
) -> None:
    real_headers, _ = _task_message(SUBTASK_TASK, ("job", "key", 0))
    rejection = screen_message(_kombu_message(body, {**real_headers, **headers}, content_type), KNOWN)
    assert rejection is not None
    assert reason in rejection.reason
    assert rejection.job_id == job
    assert rejection.queue == "fanflow.py"


def test_parameter_table_matches_the_tasks() -> None:
    app = Celery(set_as_current=False)
    register_tasks(app, mock.Mock())
    for name, parameters in TASK_PARAMETERS.items():
        signature = inspect.signature(app.tasks[name].run)
        assert [p for p in signature.parameters] == [p for p, _ in parameters], name


def test_printable() -> None:
    assert printable(None) == "-"
    assert printable("a\nb\x1b[31m") == "a?b?[31m"
    assert printable("x" * 100, limit=10) == "x" * 10 + "..."


def _envelope(**changes: Any) -> dict[str, Any]:
    envelope: dict[str, Any] = {
        "body": base64.b64encode(b'[["job", "k", 0], {}, {}]').decode(),
        "content-encoding": "utf-8", "content-type": "application/json",
        "headers": {"task": SUBTASK_TASK, "id": "1"},
        "properties": {"body_encoding": "base64", "delivery_tag": "tag-1", "delivery_mode": 2,
                       "delivery_info": {"exchange": "", "routing_key": "fanflow.py"}, "priority": 0},
    }  # fmt: skip
    envelope.update(changes)
    return envelope


CODECS = {"base64": Base64()}


def test_a_kombu_envelope_passes() -> None:
    assert envelope_problem(json.dumps(_envelope()).encode(), CODECS) is None
    assert envelope_problem(json.dumps(_envelope(headers=None)), CODECS) is None


@pytest.mark.parametrize(
    ("item", "reason"),
    [
        (b"\x00\xff garbage", "not JSON"),
        (b'{"__type__": "datetime", "__value__": "nope"}', "not JSON"),  # kombu's JSON hooks raise
        (b"[1, 2]", "not a JSON object"),
        (json.dumps(_envelope(properties=[])), "no properties"),
        (json.dumps(_envelope(properties={"body_encoding": "base64"})), "no delivery tag"),
        (
            json.dumps(_envelope(properties={"delivery_tag": "t", "delivery_info": {"exchange": ""}})),
            "no delivery info",
        ),
        (json.dumps(_envelope(headers=["task"])), "headers are not an object"),
        (json.dumps(_envelope(**{"content-type": 5})), "content type"),
        (json.dumps(_envelope(body=5)), "body or body encoding"),
        (json.dumps(_envelope(body="abc")), "body does not decode"),
        (
            json.dumps(_envelope(properties={**_envelope()["properties"], "body_encoding": "rot13"})),
            "unknown body",
        ),
    ],
)
def test_items_that_are_not_kombu_messages(item: bytes | str, reason: str) -> None:
    problem = envelope_problem(item, CODECS)
    assert problem is not None
    assert reason in problem


def _consumer() -> Any:
    app = mock.Mock(tasks=KNOWN, fanflow_store=None)
    return mock.Mock(app=app, connection_errors=(ConnectionError,))


def test_guard_acks_poison_without_calling_celerys_handler() -> None:
    headers, _ = _task_message(SUBTASK_TASK, ("job", "key", 0))
    handler = mock.Mock()
    message = _kombu_message([1, 2, 3], headers)
    guard(_consumer(), handler)(message)
    handler.assert_not_called()
    assert message.acknowledged


def test_guard_hands_a_well_formed_message_to_celerys_handler() -> None:
    headers, body = _task_message(SUBTASK_TASK, ("job", "key", 0))
    handler = mock.Mock()
    message = _kombu_message(body, headers)
    guard(_consumer(), handler)(message)
    handler.assert_called_once_with(message)
    assert not message.acknowledged


def test_guard_acks_what_celerys_handler_cannot_accept_instead_of_stopping_the_worker() -> None:
    headers, body = _task_message(SUBTASK_TASK, ("job", "key", 0))
    message = _kombu_message(body, headers)
    guard(_consumer(), mock.Mock(side_effect=ValueError("not enough values to unpack")))(message)
    assert message.acknowledged


def test_guard_lets_connection_errors_through() -> None:
    headers, body = _task_message(SUBTASK_TASK, ("job", "key", 0))
    message = _kombu_message(body, headers)
    with pytest.raises(ConnectionError):
        guard(_consumer(), mock.Mock(side_effect=ConnectionError("gone")))(message)
    assert not message.acknowledged
