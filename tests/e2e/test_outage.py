"""Redis outages seen by the producer and the CLI: a blip is ridden out, a lasting outage is one error.

Each test runs its own Redis (with an append-only file, so a restart keeps the data) and no
worker: what is tested is the producer's side.
"""

from __future__ import annotations

import secrets
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from pydantic import SecretStr

from fanflow.client import Client
from fanflow.config import Settings
from fanflow.embedded import EmbeddedRedis
from fanflow.errors import BackendError
from fanflow.result import JobStatus
from fanflow.spec import ConcatenateMerge, FanOut, PyCall, Subtask
from tests.e2e.conftest import run_cli

pytestmark = pytest.mark.e2e

GRACE_S = 2.0
#: Beyond the grace: one last attempt (connection refused at once on loopback) and process start-up.
SLACK_S = 3.0
BRANCHES = 5


@pytest.fixture
def server() -> Iterator[EmbeddedRedis]:
    with EmbeddedRedis(appendonly=True) as embedded:
        yield embedded


@pytest.fixture
def settings(server: EmbeddedRedis) -> Settings:
    prefix = f"fanflow-outage-{secrets.token_hex(4)}"
    return Settings(key_prefix=prefix, outage_grace_s=GRACE_S, task_events=False).with_redis(server.url)


def _spec(name: str = "outage", idempotency_key: str | None = None) -> FanOut:
    return FanOut(
        name=name,
        subtasks=[
            Subtask(key=f"b{index}", run=PyCall(function="tests.callables:echo", kwargs={"value": index}))
            for index in range(BRANCHES)
        ],
        merge=ConcatenateMerge(),
        idempotency_key=idempotency_key,
    )


def _restart_in_background(server: EmbeddedRedis, down_s: float) -> threading.Thread:
    thread = threading.Thread(target=server.restart, kwargs={"down_s": down_s}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while server.running and time.monotonic() < deadline:  # wait until it is really down
        time.sleep(0.01)
    return thread


def _assert_one_line(message: str, server: EmbeddedRedis) -> None:
    assert "\n" not in message.strip(), message
    assert f"127.0.0.1:{server.port}" in message
    assert server.password not in message
    assert "Traceback" not in message


def test_reads_ride_out_a_redis_restart(server: EmbeddedRedis, settings: Settings) -> None:
    client = Client.from_settings(settings)
    handle = client.submit(_spec())
    thread = _restart_in_background(server, down_s=1.0)
    started = time.monotonic()
    assert handle.status() is JobStatus.PENDING  # Redis is down now; the read waits for it
    assert time.monotonic() - started >= 0.5
    assert handle.result() is None
    assert client.get(handle.job_id).progress().size == BRANCHES
    thread.join()


def test_submit_rides_out_a_redis_restart_and_enqueues_every_branch(
    server: EmbeddedRedis, settings: Settings
) -> None:
    client = Client.from_settings(settings)
    thread = _restart_in_background(server, down_s=1.0)
    handle = client.submit(_spec())
    thread.join()
    assert handle.progress().size == BRANCHES
    queued = redis.Redis.from_url(server.url).llen("fanflow.py")
    assert queued == BRANCHES  # the job and all its messages, each once


def test_wait_fails_within_the_grace_when_redis_is_gone(server: EmbeddedRedis, settings: Settings) -> None:
    client = Client.from_settings(settings)
    handle = client.submit(_spec())
    server.stop(keep_data=True)
    started = time.monotonic()
    with pytest.raises(BackendError) as raised:
        handle.wait()  # no timeout: it must not hang on a Redis that is gone
    elapsed = time.monotonic() - started
    assert GRACE_S - 0.1 <= elapsed <= GRACE_S + SLACK_S, elapsed
    message = str(raised.value)
    _assert_one_line(message, server)
    assert message.startswith(f"job {handle.job_id}: waiting for it: Redis at 127.0.0.1:{server.port}")
    assert "FANFLOW_BROKER_URL" in message and "FANFLOW_OUTAGE_GRACE_S" in message


def test_submit_with_the_broker_gone_leaves_nothing_behind(server: EmbeddedRedis, settings: Settings) -> None:
    """The job store answers but the broker does not: the job is withdrawn, its idempotency key freed."""
    dead = EmbeddedRedis().start()
    dead_url = dead.url
    dead.stop()
    broken = settings.model_copy(update={"broker_url": SecretStr(dead_url)})
    client = Client.from_settings(broken)
    started = time.monotonic()
    with pytest.raises(BackendError) as raised:
        client.submit(_spec(idempotency_key="once"))
    assert time.monotonic() - started <= GRACE_S + 10  # kombu's own publish retries come on top
    message = str(raised.value)
    assert "the broker at 127.0.0.1:" in message and "nothing was submitted" in message
    assert dead.password not in message and "\n" not in message
    store = redis.Redis.from_url(server.url)
    assert store.keys(f"{settings.key_prefix}:*") == []  # no job meta, no index entry, no idempotency key
    # The idempotency key is free again: with a broker, the same spec submits.
    handle = Client.from_settings(settings).submit(_spec(idempotency_key="once"))
    assert handle.progress().size == BRANCHES


def _fanflow(env_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli(
        *args, env={"FANFLOW_BROKER_URL": env_url, "FANFLOW_OUTAGE_GRACE_S": str(GRACE_S)}, timeout=60
    )


@pytest.mark.parametrize(
    "command",
    [["status"], ["result"], ["result", "--wait", "30"], ["watch"], ["cancel"], ["retry"], ["submit"]],
    ids=lambda command: "-".join(command),
)
def test_cli_with_redis_gone_prints_one_line_and_exits_1(
    server: EmbeddedRedis, settings: Settings, command: list[str], tmp_path: Path
) -> None:
    handle = Client.from_settings(settings).submit(_spec())
    server.stop(keep_data=True)
    if command == ["submit"]:
        spec = tmp_path / "job.json"
        spec.write_text(_spec().model_dump_json(), encoding="utf-8")
        args = ["submit", str(spec)]
    else:
        args = [command[0], handle.job_id, *command[1:]]
    started = time.monotonic()
    done = _fanflow(server.url, *args)
    elapsed = time.monotonic() - started
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: ") and "unreachable" in lines[0]
    _assert_one_line(done.stderr, server)
    assert elapsed <= GRACE_S + SLACK_S + 5, elapsed  # + the interpreter's start-up
