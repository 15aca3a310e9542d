"""Poison messages on a fanflow queue are rejected, logged and acknowledged; the worker lives on.

A real ``celery worker`` process consumes ``fanflow.py``. Raw messages are LPUSHed onto that list
with redis-py: copies of a real ``fanflow.subtask`` message (published to a queue no worker
consumes) with the body, the content type or the task name broken, and items that are not kombu
messages at all. Without the guard the first of them stops the worker with ``Unrecoverable error``
(and the next worker too, since the message comes back), and each ``[1, 2, 3]`` holds a prefetch
slot for good. With it, every one is logged once and acknowledged, the job a message names gets a
``poison`` event and count (never an outcome), and the same worker process then runs a fan-out.
"""

from __future__ import annotations

import base64
import copy
import json
import os
import pickle
import re
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from fanflow.client import Client
from fanflow.config import Settings
from fanflow.keys import JobKeys
from fanflow.result import JobStatus
from fanflow.spec import BestEffort, ConcatenateMerge, FanOut, PyCall, Subtask
from fanflow.tasks import MERGE_TASK, SUBTASK_TASK
from tests.e2e.conftest import StartWorker, worker_env

pytestmark = pytest.mark.e2e

VISIBILITY_TIMEOUT_S = 30
QUEUE = "fanflow.py"
#: A queue no worker consumes: the template message is published there and taken off again.
PARKING = "fanflow.parked"
#: In every poison message; must never reach the worker's log.
SECRET = "sk-poison-do-not-log"
REJECTED = "poison message rejected"
#: How many ``[1, 2, 3]`` bodies: twice the worker's prefetch slots.
BLOCKERS = 8
CONCURRENCY = 4


def _spec(name: str, keys: list[str]) -> FanOut:
    return FanOut(
        name=name,
        subtasks=[
            Subtask(key=key, run=PyCall(function="tests.callables:echo", kwargs={"value": key}))
            for key in keys
        ],
        merge=ConcatenateMerge(),
        failure=BestEffort(),
    )


def _template(client: Client, job_id: str) -> dict[str, Any]:
    """A real ``fanflow.subtask`` message for ``job_id``, as kombu's Redis transport queued it."""
    client.app.send_task(SUBTASK_TASK, args=(job_id, "a", 0), queue=PARKING, ignore_result=True)
    raw = client.store.client.lpop(PARKING)
    assert raw, "the template message was not queued"
    envelope: dict[str, Any] = json.loads(raw)
    assert envelope["properties"]["body_encoding"] == "base64"
    return envelope


class Poison:
    """Builds poison items from the template: each a fresh task id and delivery tag."""

    def __init__(self, template: dict[str, Any]) -> None:
        self.template = template
        self.items: list[bytes] = []
        self.tags: list[str] = []
        #: How many of the messages name the template's job (and must be reported to it).
        self.naming_the_job = 0

    def message(
        self,
        body: Any = None,
        *,
        raw_body: bytes | None = None,
        task: str | None = None,
        content_type: str | None = None,
        names_the_job: bool = False,
    ) -> None:
        envelope = copy.deepcopy(self.template)
        data = raw_body if raw_body is not None else json.dumps(body).encode()
        envelope["body"] = base64.b64encode(data).decode()
        task_id = str(uuid.uuid4())
        envelope["headers"].update(id=task_id, root_id=task_id, argsrepr=SECRET)
        if task is not None:
            envelope["headers"]["task"] = task
        if content_type is not None:
            envelope["content-type"], envelope["content-encoding"] = content_type, "binary"
        envelope["properties"]["correlation_id"] = task_id
        envelope["properties"]["delivery_tag"] = tag = str(uuid.uuid4())
        envelope["properties"]["delivery_info"]["routing_key"] = QUEUE
        self.tags.append(tag)
        self.items.append(json.dumps(envelope).encode())
        self.naming_the_job += names_the_job

    def garbage(self, item: bytes) -> None:
        self.items.append(item)


def _wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.1)


@pytest.mark.timeout(120)
def test_poison_messages_are_rejected_and_the_same_worker_runs_the_next_job(
    e2e_redis_url: str, key_prefix: str, start_worker: StartWorker
) -> None:
    """Every kind of malformed message is logged once and acked; the worker is never restarted."""
    worker = start_worker("poison", env=worker_env(e2e_redis_url, key_prefix, VISIBILITY_TIMEOUT_S),
                          concurrency=CONCURRENCY)  # fmt: skip
    worker.wait_ready()
    settings = Settings(key_prefix=key_prefix, visibility_timeout_s=VISIBILITY_TIMEOUT_S)
    client = Client.from_settings(settings.with_redis(e2e_redis_url))
    redis_client = client.store.client

    # A real job the poison messages name, finished before they arrive.
    target = client.submit(_spec("target", ["a", "b"]))
    target_result = target.wait(timeout=60)
    assert target_result.status is JobStatus.SUCCEEDED
    job = target.job_id

    poison = Poison(_template(client, job))
    for _ in range(BLOCKERS):
        poison.message([1, 2, 3])  # used to be received, never acked: a prefetch slot lost each
    poison.message({"job_id": job, "token": SECRET})  # these crashed the worker (ValueError / TypeError)
    poison.message(SECRET)
    poison.message(42)
    poison.message(None)
    poison.message([[job, "a", 0], {}, {}, {}], names_the_job=True)  # 4 items
    poison.message([["a", 1, "x"], {}, {}])  # wrong argument types; "a" is no job
    poison.message([[job, 1, "x"], {}, {}], names_the_job=True)  # wrong argument types
    poison.message([[job, "a", 0], {"x": SECRET}, {}], names_the_job=True)  # unexpected kwargs
    poison.message(
        raw_body=pickle.dumps(((job, "a", 0), {}, {})), content_type="application/x-python-serialize"
    )
    poison.message([[job, "a", 0], {}, {}], task="fanflow.no_such_task", names_the_job=True)  # unknown task
    poison.message([[None, job, "0"], {}, {}], task=MERGE_TASK, names_the_job=True)  # round_ is a string
    poison.garbage(b"\x00\xff" + SECRET.encode() + b" not json")  # not even a kombu envelope
    poison.garbage(json.dumps(["not", "an", "envelope", SECRET]).encode())
    redis_client.lpush(QUEUE, *poison.items)  # BRPOP takes them in this order

    _wait_for(
        lambda: worker.log().count(REJECTED) >= len(poison.items), 30, "every poison message to be rejected"
    )

    # The same worker process, never restarted, runs a fan-out wider than its prefetch slots.
    keys = [f"k{index}" for index in range(12)]
    result = client.submit(_spec("after-poison", keys)).wait(timeout=60)
    assert result.status is JobStatus.SUCCEEDED, result.error
    assert result.merged == keys
    assert worker.process.poll() is None
    os.kill(worker.pid, 0)  # raises if the worker process is gone
    log = worker.log()
    assert len(re.findall(r"@\S+ ready\.", log)) == 1, "the worker started more than once"
    assert "Unrecoverable error" not in log
    assert SECRET not in log, "a poison message's payload reached the log"
    rejected = [line for line in log.splitlines() if REJECTED in line]
    assert len(rejected) == len(poison.items), rejected
    assert all("WARNING" in line or "ERROR" in line for line in rejected), rejected

    # No poison message is left queued, or unacked (kombu's unacked hash and its index).
    for name in redis_client.scan_iter(match=f"{QUEUE}*", _type="list"):
        queued = {item.encode() for item in redis_client.lrange(name, 0, -1)}
        assert not queued & set(poison.items), name
    assert not set(redis_client.hkeys("unacked")) & set(poison.tags)
    assert not {member for member in redis_client.zrange("unacked_index", 0, -1)} & set(poison.tags)

    # The job the messages named was told, once per message, and nothing else changed.
    job_keys = JobKeys.of(key_prefix, job)
    assert redis_client.hget(job_keys.meta, "poison") == str(poison.naming_the_job)
    events = [fields for _, fields in redis_client.xrange(job_keys.events) if fields.get("type") == "poison"]
    assert len(events) == poison.naming_the_job, events
    assert {event["task"] for event in events} == {SUBTASK_TASK, MERGE_TASK, "fanflow.no_such_task"}
    assert all(event["reason"] and SECRET not in str(event) for event in events), events
    after = target.result()
    assert after is not None
    assert after.status is JobStatus.SUCCEEDED
    assert after.outcomes == target_result.outcomes
    assert not redis_client.exists(JobKeys.of(key_prefix, "a").meta)
