"""Publishing a round's chord: the messages on the broker, and what a real worker makes of them."""

from __future__ import annotations

import base64
import json
import time
import tracemalloc
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import redis
from celery import Celery, shared_task
from celery.signals import before_task_publish, task_prerun

import fanflow.publish
from fanflow.app import CONTROL_QUEUE, QUEUES, create_app
from fanflow.canvas import (
    branch_task_id,
    group_id,
    merge_signature,
    merge_task_id,
    publish_round,
    republish_branches,
    republish_merge,
)
from fanflow.client import Client, JobHandle
from fanflow.config import Settings
from fanflow.publish import ChordPart, publish_parts
from fanflow.result import JobStatus
from fanflow.spec import AgentRun, FanOut, PyCall, Subtask

pytestmark = pytest.mark.integration

PY = QUEUES["python"]
#: kombu's global_keyprefix of the quiet app: its queue lists are ones no worker consumes.
QUIET = "fanflow-test-quiet:"
HEADER_TASK = "tests.publish.header"


@shared_task(name=HEADER_TASK, ignore_result=True)
def header_task(job_id: str, key: str, round_: int) -> str:
    """A throwaway chord header task (registered on every app): keys starting with "bad" raise."""
    if key.startswith("bad"):
        raise RuntimeError(f"{key} failed")
    return key


def spec_of(*keys: str, name: str = "publish", **fields: Any) -> FanOut:
    return FanOut(
        name=name,
        subtasks=[
            Subtask(key=key, run=PyCall(function="tests.callables:echo", kwargs={"value": key}))
            for key in keys
        ],
        **fields,
    )


def new_job_id() -> str:
    return uuid.uuid4().hex


@pytest.fixture(scope="module")
def broker(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
def quiet_app(settings: Settings, broker: redis.Redis) -> Iterator[Celery]:
    """An app on the test Redis whose messages stay in the queue lists (under kombu's global_keyprefix)."""
    app = create_app(settings, main="fanflow-quiet")
    app.conf.broker_transport_options = {**app.conf.broker_transport_options, "global_keyprefix": QUIET}
    yield app
    keys = list(broker.scan_iter(match=f"{QUIET}*"))
    if keys:
        broker.delete(*keys)
    app.close()


def queued(broker: redis.Redis, queue: str) -> list[dict[str, Any]]:
    """The raw messages of a queue list, in the order workers take them (kombu LPUSHes, BRPOPs)."""
    return [json.loads(raw) for raw in reversed(broker.lrange(queue, 0, -1))]


def body_of(message: dict[str, Any]) -> Any:
    assert message["properties"]["body_encoding"] == "base64"
    return json.loads(base64.b64decode(message["body"]))


def chord_size(broker: redis.Redis, gid: str) -> int | None:
    value = broker.get(f"celery-taskset-meta-{gid}.s")
    return None if value is None else int(value)


@contextmanager
def task_runs(name: str) -> Iterator[list[tuple[str, tuple[Any, ...]]]]:
    """(task id, args) of every run of task ``name`` by the in-process worker, while inside."""
    runs: list[tuple[str, tuple[Any, ...]]] = []

    def record(task_id: str | None = None, task: Any = None, args: Any = (), **_: Any) -> None:
        if task is not None and task.name == name:
            runs.append((str(task_id), tuple(args)))

    task_prerun.connect(record, weak=False)
    try:
        yield runs
    finally:
        task_prerun.disconnect(record)


def wait_for(check: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.05)


def wait_idle(broker: redis.Redis, settle: float = 0.5) -> None:
    """Wait until the worker has taken and acknowledged everything (and nothing new came for ``settle`` s)."""

    def idle() -> bool:
        pipe = broker.pipeline(transaction=False)
        for queue in (*QUEUES.values(), CONTROL_QUEUE):
            pipe.llen(queue)
        pipe.hlen("unacked")
        return not any(pipe.execute())

    wait_for(idle)
    time.sleep(settle)
    wait_for(idle)


# --- the messages ---------------------------------------------------------------------------------


def test_header_messages_are_celery_task_messages_with_the_chord_body(
    quiet_app: Celery, broker: redis.Redis
) -> None:
    job_id = new_job_id()
    spec = FanOut(
        name='ev "impact" ü',
        subtasks=[
            Subtask(key="a", run=PyCall(function="tests.callables:echo", kwargs={"value": "sk-secret"})),
            Subtask(key="b.2", run=AgentRun(argv=["echo", "{key}"])),
            Subtask(key="c-3", run=PyCall(function="tests.callables:echo")),
        ],
    )
    publish_round(quiet_app, job_id, spec, 2)
    gid = group_id(job_id, 2)
    assert gid == f"{job_id}.r2" and chord_size(broker, gid) == 3
    python = queued(broker, QUIET + PY)
    agent = queued(broker, QUIET + QUEUES["agent"])
    assert [m["headers"]["id"] for m in python] == [f"{job_id}.r2.a", f"{job_id}.r2.c-3"]
    assert [m["headers"]["id"] for m in agent] == [branch_task_id(job_id, 2, "b.2")]
    messages = {m["headers"]["id"]: m for m in python + agent}
    tags = set()
    for index, key in enumerate(["a", "b.2", "c-3"]):
        task_id = f"{job_id}.r2.{key}"
        message = messages[task_id]
        queue = QUEUES[spec.subtask(key).run.kind]
        assert (message["content-type"], message["content-encoding"]) == ("application/json", "utf-8")
        headers = message["headers"]
        assert headers["lang"] == "py" and headers["task"] == "fanflow.subtask"
        assert headers["root_id"] == task_id and headers["parent_id"] is None
        assert (headers["group"], headers["group_index"]) == (gid, index)
        assert headers["shadow"] == f'fanflow.subtask[ev "impact" ü:{key}]'
        assert headers["argsrepr"] == repr((job_id, key, 2)) and headers["kwargsrepr"] == "{}"
        assert headers["ignore_result"] is True and headers["retries"] == 0 and headers["eta"] is None
        properties = message["properties"]
        assert properties["correlation_id"] == task_id
        assert properties["delivery_info"] == {"exchange": "", "routing_key": queue}
        assert (properties["delivery_mode"], properties["priority"]) == (2, 0)
        tags.add(properties["delivery_tag"])
        args, kwargs, embed = body_of(message)
        assert (args, kwargs) == ([job_id, key, 2], {})
        assert (embed["callbacks"], embed["errbacks"], embed["chain"]) == (None, None, None)
        merge = embed["chord"]
        assert (merge["task"], merge["args"], merge["kwargs"]) == ("fanflow.merge", [job_id, 2], {})
        options = merge["options"]
        assert options["task_id"] == merge_task_id(job_id, 2) == f"{job_id}.r2#merge"
        assert (options["queue"], options["ignore_result"]) == (CONTROL_QUEUE, True)
        assert options["shadow"] == 'fanflow.merge[ev "impact" ü]'
        [errback] = options["link_error"]
        assert (errback["task"], errback["args"], errback["options"]["queue"]) == (
            "fanflow.merge",
            [job_id, 2],
            CONTROL_QUEUE,
        )
        assert "reply_to" not in options  # the body is the same whoever publishes it
        assert len(json.dumps(merge)) < 700  # every header message carries it
        assert "sk-secret" not in json.dumps(message) and "echo" not in json.dumps(message)
    assert len(tags) == 3  # kombu's delivery tags name the message in its unacked hash


def test_fast_path_messages_equal_celerys_own(
    quiet_app: Celery, broker: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A route with a priority: kombu's Redis transport puts such messages in a priority list.
    quiet_app.conf.task_routes = {"fanflow.subtask": {"priority": 5}}
    job_id = new_job_id()
    spec = spec_of("x", "y", "z", name="same")
    priority_list = f"{QUIET}{PY}\x06\x163"  # kombu: queue + sep + the priority step (0, 3, 6, 9) of 5
    publish_round(quiet_app, job_id, spec, 0, keys=["z", "x"])
    fast = queued(broker, priority_list)
    broker.delete(priority_list)
    monkeypatch.setattr(fanflow.publish, "_template", lambda *args, **kwargs: None)  # Celery's apply_async
    publish_round(quiet_app, job_id, spec, 0, keys=["z", "x"])
    celery = queued(broker, priority_list)
    assert len(fast) == len(celery) == 2 and broker.llen(QUIET + PY) == 0
    assert [m["headers"]["group_index"] for m in fast] == [0, 1]  # declared order: x, then z
    for mine, theirs in zip(fast, celery, strict=True):
        assert mine["properties"].pop("delivery_tag") != theirs["properties"].pop("delivery_tag")
        # Celery copies a signature's argsrepr/kwargsrepr options into the properties too; the
        # headers have them, which is where workers and Flower read them.
        assert theirs["properties"].pop("argsrepr") == mine["headers"]["argsrepr"]
        assert theirs["properties"].pop("kwargsrepr") == "{}"
        assert mine == theirs
        assert mine["properties"]["priority"] == 5


def test_republished_branches_are_the_same_chord_parts(quiet_app: Celery, broker: redis.Redis) -> None:
    job_id = new_job_id()
    spec = spec_of("a", "b", "c", "d")
    publish_round(quiet_app, job_id, spec, 1, keys=["b", "c", "d"])
    first = {m["headers"]["id"]: m for m in queued(broker, QUIET + PY)}
    gid = group_id(job_id, 1)
    broker.delete(QUIET + PY)
    broker.set(f"celery-taskset-meta-{gid}.c", "done")  # as if the chord had fired
    republish_branches(quiet_app, job_id, spec, 1, ["b", "c", "d"], {"d", "b"})
    again = queued(broker, QUIET + PY)
    assert [m["headers"]["id"] for m in again] == [f"{job_id}.r1.b", f"{job_id}.r1.d"]
    for message in again:
        original = first[message["headers"]["id"]]
        assert message["body"] == original["body"]  # byte for byte: args and chord body
        for field in ("id", "group", "group_index", "shadow", "argsrepr", "root_id"):
            assert message["headers"][field] == original["headers"][field]
        assert message["properties"]["delivery_tag"] != original["properties"]["delivery_tag"]
    assert [m["headers"]["group_index"] for m in again] == [0, 2]
    assert chord_size(broker, gid) == 3 and broker.get(f"celery-taskset-meta-{gid}.c") == b"done"
    with pytest.raises(ValueError, match="a"):
        republish_branches(quiet_app, job_id, spec, 1, ["b", "c", "d"], {"a"})


def test_republish_merge_sends_the_merge_alone(quiet_app: Celery, broker: redis.Redis) -> None:
    job_id = new_job_id()
    republish_merge(quiet_app, job_id, spec_of("a", name="m"), 3)
    [message] = queued(broker, QUIET + CONTROL_QUEUE)
    headers = message["headers"]
    assert (headers["task"], headers["id"], headers["shadow"]) == (
        "fanflow.merge",
        f"{job_id}.r3#merge",
        "fanflow.merge[m]",
    )
    assert headers["group"] is None and headers["ignore_result"] is True
    args, kwargs, embed = body_of(message)
    assert (args, kwargs, embed["chord"]) == ([None, job_id, 3], {}, None)


def test_keys_are_published_in_declared_order_and_must_exist(quiet_app: Celery, broker: redis.Redis) -> None:
    job_id = new_job_id()
    spec = spec_of("a", "b", "c")
    with pytest.raises(ValueError, match="nope"):
        publish_round(quiet_app, job_id, spec, 0, keys=["a", "nope"])
    with pytest.raises(ValueError):
        publish_round(quiet_app, job_id, spec, 0, keys=[])
    assert broker.llen(QUIET + PY) == 0 and chord_size(broker, group_id(job_id, 0)) is None
    publish_round(quiet_app, job_id, spec, 0, keys=["c", "a"])
    assert [(m["headers"]["id"], m["headers"]["group_index"]) for m in queued(broker, QUIET + PY)] == [
        (f"{job_id}.r0.a", 0),
        (f"{job_id}.r0.c", 1),
    ]
    assert chord_size(broker, group_id(job_id, 0)) == 2


def test_publish_signals_reach_their_receivers(quiet_app: Celery, broker: redis.Redis) -> None:
    seen: list[str] = []

    def stamp(headers: dict[str, Any], **_: Any) -> None:
        seen.append(headers["id"])
        headers["trace"] = "t-" + headers["id"]

    before_task_publish.connect(stamp, weak=False)
    try:
        job_id = new_job_id()
        publish_round(quiet_app, job_id, spec_of("a", "b"), 0)
    finally:
        before_task_publish.disconnect(stamp)
    assert seen == [f"{job_id}.r0.a", f"{job_id}.r0.b"]
    assert [m["headers"]["trace"] for m in queued(broker, QUIET + PY)] == [f"t-{i}" for i in seen]


def test_ten_thousand_branches_publish_in_bounded_memory(quiet_app: Celery, broker: redis.Redis) -> None:
    job_id = new_job_id()
    spec = spec_of(*(f"branch-{i:05d}" for i in range(10_000)), name="big")
    started = not tracemalloc.is_tracing()
    if started:
        tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    tracemalloc.reset_peak()
    try:
        publish_round(quiet_app, job_id, spec, 0)
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        if started:
            tracemalloc.stop()
    assert peak < 50 * 2**20  # chunks of 1000 messages, not 10,000 at once
    raw = broker.lrange(QUIET + PY, 0, -1)
    assert len(raw) == 10_000 and max(len(m) for m in raw) < 3000
    assert chord_size(broker, group_id(job_id, 0)) == 10_000
    headers = [json.loads(m)["headers"] for m in reversed(raw)]
    assert [h["group_index"] for h in headers] == list(range(10_000))
    assert len({h["id"] for h in headers}) == 10_000


# --- on a real worker -------------------------------------------------------------------------------


def test_a_published_round_completes_and_merges_once(client: Client, broker: redis.Redis) -> None:
    job_id = new_job_id()
    spec = spec_of("a", "b", "c")
    client.store.create_job(job_id, spec)
    with task_runs("fanflow.merge") as merges:
        publish_round(client.app, job_id, spec, 0)
        result = JobHandle(client, job_id).wait(timeout=30)
        wait_idle(broker)
    assert result.status is JobStatus.SUCCEEDED and result.merged == ["a", "b", "c"]
    assert len(merges) == 1 and merges[0][0] == merge_task_id(job_id, 0)


def test_celerys_own_publishing_runs_the_same_round(
    client: Client, broker: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fanflow.publish, "_template", lambda *args, **kwargs: None)  # as on RabbitMQ
    job_id = new_job_id()
    spec = spec_of("a", "b")
    client.store.create_job(job_id, spec)
    with task_runs("fanflow.merge") as merges:
        publish_round(client.app, job_id, spec, 0)
        result = JobHandle(client, job_id).wait(timeout=30)
        wait_idle(broker)
    assert result.status is JobStatus.SUCCEEDED and result.merged == ["a", "b"]
    assert [task_id for task_id, _ in merges] == [merge_task_id(job_id, 0)]


def test_header_messages_published_twice_fire_the_chord_once(client: Client, broker: redis.Redis) -> None:
    job_id = new_job_id()
    spec = spec_of("a", "b", "c", "d")
    client.store.create_job(job_id, spec)
    with task_runs("fanflow.merge") as merges, task_runs("fanflow.subtask") as branches:
        publish_round(client.app, job_id, spec, 0)
        republish_branches(client.app, job_id, spec, 0, None, ["a", "c"])  # while the round runs
        result = JobHandle(client, job_id).wait(timeout=30)
        wait_idle(broker)
        republish_branches(client.app, job_id, spec, 0, None, ["b", "d"])  # after the chord fired
        wait_idle(broker)
    assert result.status is JobStatus.SUCCEEDED and result.merged == ["a", "b", "c", "d"]
    assert len(branches) == 8  # every copy was delivered and ran ...
    assert [task_id for task_id, _ in merges] == [merge_task_id(job_id, 0)]  # ... the body once


def test_republished_merge_runs_with_the_merge_task_id(client: Client, broker: redis.Redis) -> None:
    job_id = new_job_id()
    spec = spec_of("a")
    client.store.create_job(job_id, spec)
    publish_round(client.app, job_id, spec, 0)
    JobHandle(client, job_id).wait(timeout=30)
    with task_runs("fanflow.merge") as merges:
        republish_merge(client.app, job_id, spec, 0)  # as the sweeper does (this merge finds it done)
        wait_for(lambda: len(merges) == 1)
        wait_idle(broker)
    assert merges == [(merge_task_id(job_id, 0), (None, job_id, 0))]


def test_a_raising_header_task_runs_the_merge_once_as_the_errback(
    client: Client, broker: redis.Redis
) -> None:
    job_id = new_job_id()
    keys = ("ok-0", "bad-1", "ok-2", "bad-3")
    spec = spec_of(*keys)  # no job in the store: the merge finds nothing to do, it only has to run
    parts = [
        ChordPart(
            branch_task_id(job_id, 0, key), (job_id, key, 0), PY, f"{HEADER_TASK}[{key}]", repr(key), index
        )
        for index, key in enumerate(keys)
    ]
    with task_runs("fanflow.merge") as merges, task_runs(HEADER_TASK) as headers:
        publish_parts(
            client.app, HEADER_TASK, group_id(job_id, 0), merge_signature(client.app, job_id, spec, 0), parts,
            chord_size=len(parts),
        )  # fmt: skip
        wait_for(lambda: len(merges) >= 1)
        wait_idle(broker)
    assert len(headers) == 4
    # Celery skipped the body (whose id is merge_task_id) and called its errback, an "old-style" one:
    # the body's task id comes first, then the errback's own args.
    [(errback_id, args)] = merges
    assert errback_id != merge_task_id(job_id, 0)
    assert args == (merge_task_id(job_id, 0), job_id, 0)
