"""Crash recovery with separate ``celery worker`` processes and fanflow's default settings.

- One of three workers is SIGKILLed mid-fan-out: its branches run again elsewhere once their
  leases lapse (not after the broker's one-hour visibility timeout), every branch succeeds and
  the merge runs once.
- A branch message lost between the broker's pop and its unacked record (simulated by deleting
  it from the queue list) is found missing and delivered again.
- A worker with 256 threads runs a 600-branch fan-out to completion.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import redis

from fanflow.canvas import branch_task_id
from fanflow.client import Client, JobHandle
from fanflow.config import Settings
from fanflow.embedded import EmbeddedRedis
from fanflow.errors import JobTimeoutError
from fanflow.result import JobResult, JobStatus, OutcomeStatus
from fanflow.spec import AllOrNothing, ConcatenateMerge, FanOut, PyCall, Subtask
from tests.callables import calls
from tests.e2e.conftest import StartWorker, WorkerProcess, worker_env

pytestmark = pytest.mark.e2e

#: The bound the README promises: a dead worker's branch runs again within this many seconds.
RECOVERY_BOUND_S = 60


def _counting_spec(name: str, counter_dir: Path, keys: list[str], delay: float) -> FanOut:
    return FanOut(
        name=name,
        subtasks=[
            Subtask(
                key=key,
                run=PyCall(
                    function="tests.callables:count_calls",
                    kwargs={"counter_dir": str(counter_dir), "name": key, "value": key, "delay": delay},
                ),
            )
            for key in keys
        ],
        merge=ConcatenateMerge(),
        failure=AllOrNothing(),
    )


def _client(redis_url: str, key_prefix: str) -> Client:
    return Client.from_settings(Settings(key_prefix=key_prefix).with_redis(redis_url))


def _started_by(counter_dir: Path, pid: int) -> set[str]:
    """Keys of the branches that process ``pid`` started (``count_calls`` writes its pid first)."""
    return {
        path.name for path in counter_dir.iterdir() if str(pid) in path.read_text(encoding="utf-8").split()
    }


def _wait(handle: JobHandle, timeout: float) -> JobResult | None:
    try:
        return handle.wait(timeout=timeout)
    except JobTimeoutError:
        return None


def _kill_while_running(victim: WorkerProcess, counter_dir: Path, timeout: float) -> set[str]:
    """SIGKILL ``victim`` once it runs branches; return the keys it had started."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _started_by(counter_dir, victim.pid):
            time.sleep(0.3)  # let it take a few more
            victim.kill()
            return _started_by(counter_dir, victim.pid)
        time.sleep(0.02)
    raise AssertionError(f"worker {victim.name} started no branch within {timeout}s")


@pytest.mark.timeout(240)
def test_killed_worker_branches_run_again_within_the_bound_and_merge_once(
    e2e_redis_url: str, key_prefix: str, start_worker: StartWorker, tmp_path: Path
) -> None:
    """Three workers, default settings; one SIGKILLed mid-fan-out; the job finishes within the bound."""
    env = worker_env(e2e_redis_url, key_prefix)
    workers = [start_worker(f"w{index}", env=env, concurrency=4) for index in range(3)]
    for worker in workers:
        worker.wait_ready()
    counter_dir = tmp_path / "calls"
    counter_dir.mkdir()
    keys = [f"b{index:02d}" for index in range(60)]
    client = _client(e2e_redis_url, key_prefix)

    handle = client.submit(_counting_spec("worker-crash", counter_dir, keys, delay=2.0))
    in_flight = _kill_while_running(workers[0], counter_dir, timeout=30)
    killed_at = time.monotonic()
    result = _wait(handle, RECOVERY_BOUND_S + 30)
    finished_after = time.monotonic() - killed_at

    assert result is not None, (
        f"job not finished {RECOVERY_BOUND_S + 30}s after the kill: {handle.progress()}"
    )
    assert finished_after < RECOVERY_BOUND_S, f"finished {finished_after:.1f}s after the kill"
    assert result.status is JobStatus.SUCCEEDED, result.error
    assert [o.key for o in result.outcomes] == keys
    assert all(o.status is OutcomeStatus.SUCCEEDED for o in result.outcomes)
    assert result.merged == keys
    assert handle.progress().merges == 1
    unfinished = sorted(key for key in in_flight if calls(str(counter_dir), key) < 2)
    assert not unfinished, f"branches the killed worker had started never ran again: {unfinished}"
    assert not any(str(result.outcome(key).worker).startswith("w0@") for key in in_flight)
    print(f"\nkilled w0 with {len(in_flight)} branches running; job finished {finished_after:.1f}s later")


@pytest.mark.timeout(240)
def test_a_long_branch_of_a_live_worker_runs_once(
    e2e_redis_url: str, key_prefix: str, start_worker: StartWorker, tmp_path: Path
) -> None:
    """A 75 s branch without timeout_s runs exactly once: with the default visibility timeout and
    with one far shorter than the branch (the broker restores the message every 20 s; the copies
    find the branch's lease held and are dropped)."""
    counter_dir = tmp_path / "calls"
    counter_dir.mkdir()
    handles = []
    # Each visibility timeout gets a Redis of its own: workers sharing a broker share its queues
    # and kombu's unacked hash, and the short one's restore sweep would take the other's messages.
    with EmbeddedRedis() as second:
        for label, visibility, url in (("default", None, e2e_redis_url), ("short", 20, second.url)):
            env = worker_env(url, key_prefix, visibility)
            for index in range(2):
                start_worker(f"{label}{index}", env=env, concurrency=2).wait_ready()
            settings = Settings(
                key_prefix=key_prefix, **({"visibility_timeout_s": visibility} if visibility else {})
            )
            client = Client.from_settings(settings.with_redis(url))
            spec = _counting_spec(f"long-{label}", counter_dir, [f"long-{label}"], 75.0)
            handles.append(client.submit(spec))
        for handle in handles:
            result = _wait(handle, 150)
            assert result is not None and result.status is JobStatus.SUCCEEDED, handle.progress()
            assert handle.progress().merges == 1
    assert calls(str(counter_dir), "long-default") == 1
    assert calls(str(counter_dir), "long-short") == 1


@pytest.mark.timeout(180)
def test_a_lost_branch_message_is_found_missing_and_delivered_again(
    e2e_redis_url: str, key_prefix: str, start_worker: StartWorker, tmp_path: Path
) -> None:
    """Delete one branch's message from the queue list (what a worker killed between the broker's
    pop and its unacked bookkeeping does); the sweeper sends it again and the job finishes."""
    client = _client(e2e_redis_url, key_prefix)
    counter_dir = tmp_path / "calls"
    counter_dir.mkdir()
    keys = [f"k{index}" for index in range(10)]
    handle = client.submit(_counting_spec("lost-message", counter_dir, keys, delay=0.1))
    broker = redis.Redis.from_url(e2e_redis_url)
    lost_id = branch_task_id(handle.job_id, 0, "k3").encode()
    removed = 0
    for message in broker.lrange("fanflow.py", 0, -1):
        if lost_id + b'"' in message:
            removed += broker.lrem("fanflow.py", 1, message)
    assert removed == 1

    worker = start_worker("w", env=worker_env(e2e_redis_url, key_prefix))
    worker.wait_ready()
    result = _wait(handle, 90)
    assert result is not None, handle.progress()
    assert result.status is JobStatus.SUCCEEDED, result.error
    assert result.merged == keys
    assert calls(str(counter_dir), "k3") == 1
    assert handle.progress().merges == 1
    assert "were lost before they began" in worker.log()


@pytest.mark.timeout(240)
def test_a_worker_with_256_threads_finishes_600_branches(
    e2e_redis_url: str, key_prefix: str, start_worker: StartWorker
) -> None:
    """No connection per thread, no pool exhaustion: -c 256 with 600 branches of 0.5 s."""
    worker = start_worker("wide", env=worker_env(e2e_redis_url, key_prefix), concurrency=256)
    worker.wait_ready()
    client = _client(e2e_redis_url, key_prefix)
    keys = [f"s{index:03d}" for index in range(600)]
    spec = FanOut(
        name="wide",
        subtasks=[
            Subtask(key=key, run=PyCall(function="tests.callables:echo", kwargs={"value": key, "delay": 0.5}))
            for key in keys
        ],
    )
    started = time.monotonic()
    result = _wait(client.submit(spec), 120)
    assert result is not None and result.status is JobStatus.SUCCEEDED
    assert result.merged == keys
    log = worker.log()
    assert "Too many connections" not in log and "unreachable" not in log
    print(f"\n600 branches of 0.5 s on -c 256: {time.monotonic() - started:.1f}s")
