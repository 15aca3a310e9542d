"""Redis restarts mid-fan-out: the job still finishes, with every branch, merged once.

A real ``celery worker`` process (8 threads) runs a fan-out of 40 half-second branches on a private
Redis with an append-only file (every write fsynced). Once some branches are done, Redis is stopped
for 5 s and started again on the same port with the same data. Workers reconnect; branches that
could not reach Redis retry; whatever message the outage stranded must come back (fanflow's
crash recovery) well before the default visibility timeout: the test allows 120 s after Redis is back.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from fanflow.client import Client, JobHandle
from fanflow.config import Settings
from fanflow.embedded import EmbeddedRedis
from fanflow.errors import JobTimeoutError
from fanflow.result import JobStatus, OutcomeStatus
from fanflow.spec import AllOrNothing, ConcatenateMerge, FanOut, PyCall, Subtask
from tests.e2e.conftest import StartWorker, worker_env

pytestmark = pytest.mark.e2e

BRANCHES = 40
DELAY_S = 0.5
CONCURRENCY = 8
DOWN_S = 5.0
#: How long the job may take once Redis is back (the default visibility timeout is an hour).
AFTER_RESTART_S = 120


@pytest.fixture
def aof_redis() -> Iterator[EmbeddedRedis]:
    """A Redis of this test's own whose data survives a restart (append-only file, fsync always)."""
    with EmbeddedRedis(appendonly=True) as server:
        yield server


def _spec(keys: list[str]) -> FanOut:
    return FanOut(
        name="redis-restart",
        subtasks=[
            Subtask(
                key=key,
                run=PyCall(function="tests.callables:echo", kwargs={"value": key, "delay": DELAY_S}),
                timeout_s=60,
            )
            for key in keys
        ],
        merge=ConcatenateMerge(),
        failure=AllOrNothing(),
    )


def _branch_of(message: dict[str, Any]) -> str:
    """``job/key/round`` of a kombu message holding a ``fanflow.subtask`` (else its task name)."""
    headers = message.get("headers") or {}
    if headers.get("task") != "fanflow.subtask":
        return f"<{headers.get('task')} {headers.get('id')}>"
    body = message["body"]
    if message.get("properties", {}).get("body_encoding") == "base64":
        body = base64.b64decode(body)
    args = json.loads(body)[0]
    return f"{args[1]}@r{args[2]}"


def _where_are_the_messages(client: Client, handle: JobHandle, keys: list[str]) -> str:
    """Where the branches without an outcome are: queued, unacked (held by a worker), or gone."""
    store = client.store
    raw = redis.Redis(connection_pool=store.client.connection_pool)
    outcomes = store.outcomes(handle.job_id)
    missing = [key for key in keys if key not in outcomes]
    queued: dict[str, list[str]] = {}
    for queue in ("fanflow.py", "fanflow.control"):
        for item in raw.lrange(queue, 0, -1):
            queued.setdefault(_branch_of(json.loads(item)), []).append(queue)
    unacked: dict[str, int] = {}
    for value in raw.hvals("unacked"):
        branch = _branch_of(json.loads(value)[0])
        unacked[branch] = unacked.get(branch, 0) + 1
    meta = handle.progress()
    deliveries = raw.hgetall(store.keys(handle.job_id).deliveries)
    lines = [
        f"job {meta.status.value}, round {meta.round}: {meta.done}/{meta.size} done, merges={meta.merges}",
        f"branches without an outcome: {missing}",
    ]
    for key in missing:
        branch = f"{key}@r{meta.round}"
        places = [f"queue {q}" for q in queued.get(branch, [])]
        if branch in unacked:
            places.append(f"unacked hash x{unacked[branch]}")
        count = deliveries.get(f"{key}:{meta.round}")
        lines.append(
            f"  {key}: {', '.join(places) or 'gone (in no queue, not unacked)'}; began {count or 0}x"
        )
    others = sorted(name for name in {*queued, *unacked} if not name.endswith(f"@r{meta.round}"))
    if others:
        lines.append(f"other messages: {others}")
    return "\n".join(lines)


@pytest.mark.timeout(AFTER_RESTART_S + 90)
def test_a_fanout_survives_a_redis_restart_and_merges_once(
    aof_redis: EmbeddedRedis, key_prefix: str, start_worker: StartWorker
) -> None:
    worker = start_worker(
        "w1", env=worker_env(aof_redis.url, key_prefix), concurrency=CONCURRENCY
    )  # default visibility timeout
    worker.wait_ready()
    client = Client.from_settings(Settings(key_prefix=key_prefix).with_redis(aof_redis.url))
    with client:
        _run_through_a_restart(aof_redis, client)


def _run_through_a_restart(aof_redis: EmbeddedRedis, client: Client) -> None:
    keys = [f"b{index:02d}" for index in range(BRANCHES)]
    handle = client.submit(_spec(keys))

    deadline = time.monotonic() + 60
    while handle.progress().done < CONCURRENCY:  # a first wave is done, the next one is running
        assert time.monotonic() < deadline, "the worker did not get going"
        time.sleep(0.05)
    done_before = handle.progress().done
    aof_redis.stop(keep_data=True)
    time.sleep(DOWN_S)
    aof_redis.start()
    back_at = time.monotonic()

    try:
        result = handle.wait(timeout=AFTER_RESTART_S)
    except JobTimeoutError:
        pytest.fail(
            f"job not finished {AFTER_RESTART_S}s after Redis came back ({done_before} branches were "
            f"done before it stopped):\n{_where_are_the_messages(client, handle, keys)}"
        )
    took = time.monotonic() - back_at

    assert result.status is JobStatus.SUCCEEDED, result.error
    assert [o.key for o in result.outcomes] == keys
    for outcome in result.outcomes:
        assert outcome.status is OutcomeStatus.SUCCEEDED, (outcome.key, outcome.error)
        assert outcome.output == outcome.key
    assert result.merged == keys
    assert handle.progress().merges == 1
    print(f"\n{done_before} branches done before Redis stopped; job finished {took:.1f}s after it was back")
