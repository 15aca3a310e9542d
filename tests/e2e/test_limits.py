"""Shared limits across three separate worker processes (the point of them: Celery's rate_limit is
per worker, so three workers at ``10/s`` start 30 a second)."""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

import pytest
import redis

from fanflow import Client, FanOut, PyCall, Settings, Subtask
from fanflow.app import limiter_of
from fanflow.ratelimit import Limit
from fanflow.result import JobStatus
from tests.callables import intervals, max_overlap, max_starts_in_window, recorded_pids
from tests.e2e.conftest import StartWorker, WorkerProcess, run_cli, worker_env
from tests.specs import throttled_fanout, timed_fanout

pytestmark = pytest.mark.e2e


def _three_workers(redis_url: str, key_prefix: str, start_worker: StartWorker) -> Client:
    return _start_three(redis_url, key_prefix, start_worker)[0]


def _start_three(
    redis_url: str, key_prefix: str, start_worker: StartWorker
) -> tuple[Client, list[WorkerProcess]]:
    env = worker_env(redis_url, key_prefix)
    workers = [start_worker(f"w{index}", env=env, concurrency=8) for index in range(3)]
    for worker in workers:
        worker.wait_ready()
    return Client.from_settings(Settings(key_prefix=key_prefix).with_redis(redis_url)), workers


@pytest.mark.timeout(180)
def test_a_request_rate_holds_across_three_workers_and_is_used(
    e2e_redis_url: str, key_prefix: str, start_worker: StartWorker, tmp_path: Path
) -> None:
    rate = 6
    record = tmp_path / "calls"
    record.mkdir()
    client = _three_workers(e2e_redis_url, key_prefix, start_worker)
    limiter_of(client.app).set_limit(Limit(key="svc", requests=rate, window_s=1.0))
    result = client.submit(timed_fanout(record, 60, "svc", 0.05)).wait(timeout=120)
    assert result.status is JobStatus.SUCCEEDED
    spans = intervals(str(record))
    assert len(spans) == 60
    peak = max_starts_in_window(spans, 1.0)
    starts = [start for start, _ in spans]
    sustained = (len(starts) - 1) / (starts[-1] - starts[0])
    print(f"\nlimit {rate}/s over 3 workers: peak 1 s window {peak}, sustained {sustained:.2f}/s")
    assert peak <= rate
    assert sustained >= 0.9 * rate


@pytest.mark.timeout(180)
def test_a_concurrency_limit_holds_across_three_workers(
    e2e_redis_url: str, key_prefix: str, start_worker: StartWorker, tmp_path: Path
) -> None:
    record = tmp_path / "calls"
    record.mkdir()
    client = _three_workers(e2e_redis_url, key_prefix, start_worker)
    limiter_of(client.app).set_limit(Limit(key="pool", concurrency=3))
    result = client.submit(timed_fanout(record, 24, "pool", 0.4)).wait(timeout=120)
    assert result.status is JobStatus.SUCCEEDED
    peak = max_overlap(intervals(str(record)))
    print(f"\nconcurrency 3 over 3 workers x 8 threads: peak {peak} in flight")
    assert peak <= 3
    status = limiter_of(client.app).status("pool")
    assert status is not None and status.in_flight == 0


@pytest.mark.timeout(180)
def test_a_small_job_is_not_starved_behind_a_big_one_on_the_same_key(
    e2e_redis_url: str, key_prefix: str, start_worker: StartWorker, tmp_path: Path
) -> None:
    """5,000 branches at 50/s ahead (100 s of work), then 10 more: the small job's branches all start
    within seconds (each job has its own line on the key, the big one's places given at submit), and
    the key is never used beyond its limit."""
    rate, big_size = 50, 5000
    big_dir, small_dir = tmp_path / "big", tmp_path / "small"
    big_dir.mkdir()
    small_dir.mkdir()
    client = _three_workers(e2e_redis_url, key_prefix, start_worker)
    limiter_of(client.app).set_limit(Limit(key="shared", requests=rate, window_s=1.0))
    big = client.submit(timed_fanout(big_dir, big_size, "shared", 0.0, name="big"))
    # The big job holds the key, and its messages (ETAs: its places in line) have left the queue
    # for the workers, as they do within seconds; how fast depends on the machine, not on fanflow.
    broker = redis.Redis.from_url(e2e_redis_url)
    time.sleep(3.0)
    deadline = time.monotonic() + 60
    while broker.llen("fanflow.py") and time.monotonic() < deadline:
        time.sleep(0.1)
    submitted = time.time()
    small = client.submit(timed_fanout(small_dir, 10, "shared", 0.0, name="small"))
    assert small.wait(timeout=60).status is JobStatus.SUCCEEDED
    small_starts = [start for start, _ in intervals(str(small_dir))]
    spans = intervals(str(big_dir)) + intervals(str(small_dir))
    started_then = len(intervals(str(big_dir)))
    big.cancel()
    last = max(small_starts) - submitted
    print(
        f"\n{big_size} branches ahead at {rate}/s: the small job's 10 started within {last:.1f}s "
        f"(the big job had run {started_then}); busiest 1 s window {max_starts_in_window(spans, 1.0)}"
    )
    assert last < 5.0
    assert started_then < big_size / 2  # it did not wait for the big job to drain
    assert max_starts_in_window(spans, 1.0) <= rate


def test_the_limits_command_sets_shows_resets_and_deletes(e2e_redis_url: str, key_prefix: str) -> None:
    env = {"FANFLOW_BROKER_URL": e2e_redis_url, "FANFLOW_KEY_PREFIX": key_prefix}

    def fanflow(*args: str) -> subprocess.CompletedProcess[str]:
        return run_cli("limits", *args, env=env, timeout=60)

    done = fanflow("set", "openai:gpt-4o-mini", "--requests", "500", "--per", "1m", "--tokens", "200000",
                   "--concurrency", "50")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "500 requests/60s" in done.stderr and "50 at once" in done.stderr
    shown = fanflow("show")
    assert shown.returncode == 0 and "openai:gpt-4o-mini" in shown.stdout
    empty = fanflow("set", "x")
    assert empty.returncode == 2 and len(empty.stderr.strip().splitlines()) == 1
    bad = fanflow("set", "x", "--requests", "5", "--per", "soon")
    assert bad.returncode == 2
    assert fanflow("reset", "openai:gpt-4o-mini").returncode == 0
    assert "deleted" in fanflow("delete", "openai:gpt-4o-mini").stderr
    missing = fanflow("show", "openai:gpt-4o-mini")
    assert missing.returncode == 1 and "no limit is set" in missing.stderr


@pytest.mark.timeout(240)
def test_a_killed_workers_concurrency_slot_is_freed_when_its_lease_lapses(
    e2e_redis_url: str, key_prefix: str, start_worker: StartWorker, tmp_path: Path
) -> None:
    """concurrency=1; the worker holding the slot is SIGKILLed: the slot comes back within the lease."""
    env = worker_env(e2e_redis_url, key_prefix)
    workers = [start_worker(f"w{index}", env=env, concurrency=4) for index in range(2)]
    for worker in workers:
        worker.wait_ready()
    client = Client.from_settings(Settings(key_prefix=key_prefix).with_redis(e2e_redis_url))
    limiter_of(client.app).set_limit(Limit(key="solo", concurrency=1))
    counter = tmp_path / "calls"
    counter.mkdir()
    spec = FanOut(
        name="solo",
        subtasks=[
            Subtask(
                key=f"s{index}",
                run=PyCall(
                    function="tests.callables:count_calls",
                    kwargs={"counter_dir": str(counter), "name": f"s{index}", "value": index, "delay": 3.0},
                ),
                limits=["solo"],
            )
            for index in range(3)
        ],
    )
    handle = client.submit(spec)
    deadline = time.monotonic() + 30
    holder = None
    while holder is None and time.monotonic() < deadline:
        pids = {int(pid) for path in counter.iterdir() for pid in path.read_text().split()}
        holder = next((worker for worker in workers if worker.pid in pids), None)
        time.sleep(0.05)
    assert holder is not None, "no branch started"
    holder.kill()
    killed_at = time.monotonic()
    result = handle.wait(timeout=120)
    assert result.status is JobStatus.SUCCEEDED, result.error
    print(f"\nslot holder killed; job finished {time.monotonic() - killed_at:.1f}s later")
    assert time.monotonic() - killed_at < 90
    status = limiter_of(client.app).status("solo")
    assert status is not None and status.in_flight == 0


@pytest.mark.timeout(180)
def test_a_429_cools_the_key_down_for_every_worker(
    e2e_redis_url: str, key_prefix: str, start_worker: StartWorker, tmp_path: Path
) -> None:
    client, workers = _start_three(e2e_redis_url, key_prefix, start_worker)
    limiter_of(client.app).set_limit(Limit(key="api", requests=1000, window_s=1.0))
    counter = tmp_path / "throttled"
    counter.mkdir()
    throttled = throttled_fanout(counter, "api", 4.0)
    first = client.submit(throttled)
    deadline = time.monotonic() + 30
    while not (counter / "t").exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    answered_429_at = time.time()
    time.sleep(0.3)  # the branch runner has cooled the key down by now
    record = tmp_path / "calls"
    record.mkdir()
    after = client.submit(timed_fanout(record, 24, "api", 0.2)).wait(timeout=60)
    assert after.status is JobStatus.SUCCEEDED
    assert first.wait(timeout=30).status is JobStatus.SUCCEEDED
    earliest = min(start for start, _ in intervals(str(record)))
    waited = earliest - answered_429_at
    print(f"\n429 with Retry-After 4 s; the other job's first call started {waited:.2f}s later")
    assert earliest >= answered_429_at + 3.5  # no worker started one during the cool-down
    # Every worker took some of the other job's messages during the cool-down and sent them back
    # for later (which worker then runs them is the broker's business).
    deferred = re.compile(r"fanflow\.subtask\[limited:\S+\]\[\S+\] retry: Retry in")
    assert all(deferred.search(worker.log()) for worker in workers), [w.name for w in workers]
    assert recorded_pids(str(record))
