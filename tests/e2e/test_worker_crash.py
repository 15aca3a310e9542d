"""A worker process dies mid-fan-out: its branches are redelivered to the survivor and the job still succeeds.

Two real ``celery worker`` processes share the queues of a private Redis. Once the first one is
running branches it is SIGKILLed (no shutdown, no acks); the broker gives its unacknowledged
messages back after the visibility timeout, the second worker runs them, and the job merges once.
Branches may run twice (at-least-once delivery); the job store records each outcome once.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from fanflow.client import Client, JobHandle
from fanflow.config import Settings
from fanflow.errors import JobTimeoutError
from fanflow.result import JobResult, JobStatus, OutcomeStatus
from fanflow.spec import AllOrNothing, ConcatenateMerge, FanOut, PyCall, Subtask
from tests.callables import calls
from tests.e2e.conftest import StartWorker, WorkerProcess, worker_env

pytestmark = pytest.mark.e2e

BRANCHES = 24
DELAY_S = 1.0
VISIBILITY_TIMEOUT_S = 10
CONCURRENCY = 4  # threads per worker
#: How long the job may take after the kill: the visibility timeout plus ample slack.
WAIT_S = 90


def _spec(counter_dir: Path, keys: list[str]) -> FanOut:
    return FanOut(
        name="worker-crash",
        subtasks=[
            Subtask(
                key=key,
                run=PyCall(
                    function="tests.callables:count_calls",
                    kwargs={"counter_dir": str(counter_dir), "name": key, "value": key, "delay": DELAY_S},
                ),
            )
            for key in keys
        ],
        merge=ConcatenateMerge(),
        failure=AllOrNothing(),
    )


def _started_by(counter_dir: Path, pid: int) -> set[str]:
    """Keys of the branches that process ``pid`` started (``count_calls`` writes its pid first)."""
    started = set()
    for path in counter_dir.iterdir():
        if str(pid) in path.read_text(encoding="utf-8").split():
            started.add(path.name)
    return started


def _kill_once_running(
    victim: WorkerProcess, handle: JobHandle, counter_dir: Path, timeout: float
) -> set[str]:
    """SIGKILL ``victim`` once all its threads run a branch; return the keys it had started by then.

    With every thread busy its prefetch slots are full, so it is not between kombu's BRPOP and the
    unacked bookkeeping: a kill there loses the message in flight, a known gap of kombu's Redis
    transport that this test is not about. If not all threads get busy soon, kill anyway.
    """
    deadline = time.monotonic() + timeout
    first_seen: float | None = None
    while time.monotonic() < deadline:
        running = _started_by(counter_dir, victim.pid)
        if running and first_seen is None:
            first_seen = time.monotonic()
        if running and (len(running) >= CONCURRENCY or time.monotonic() - (first_seen or 0) > 0.5):
            assert not handle.status().is_final, "the job finished before the worker could be killed"
            victim.kill()
            return _started_by(counter_dir, victim.pid)
        time.sleep(0.02)
    raise AssertionError(f"worker {victim.name} started no branch within {timeout}s")


@pytest.mark.timeout(180)
def test_killed_worker_branches_are_redelivered_and_the_job_merges_once(
    e2e_redis_url: str, key_prefix: str, start_worker: StartWorker, tmp_path: Path
) -> None:
    """SIGKILL one of two workers mid-fan-out; the survivor finishes every branch; the merge runs once."""
    env = worker_env(e2e_redis_url, key_prefix, VISIBILITY_TIMEOUT_S)
    victim = start_worker("w1", env=env, concurrency=CONCURRENCY)
    survivor = start_worker("w2", env=env, concurrency=CONCURRENCY)
    victim.wait_ready()
    survivor.wait_ready()
    survivor_hostname = f"{survivor.name}@{socket.gethostname()}"

    counter_dir = tmp_path / "calls"
    counter_dir.mkdir()
    keys = [f"b{index:02d}" for index in range(BRANCHES)]
    settings = Settings(key_prefix=key_prefix, visibility_timeout_s=VISIBILITY_TIMEOUT_S)
    client = Client.from_settings(settings.with_redis(e2e_redis_url))
    store = client.store

    started = time.monotonic()
    handle = client.submit(_spec(counter_dir, keys))
    in_flight = _kill_once_running(victim, handle, counter_dir, timeout=30)
    killed_at = time.monotonic() - started

    result: JobResult | None
    try:
        result = handle.wait(timeout=WAIT_S)
    except JobTimeoutError:
        result = None
    if result is None:
        meta = handle.progress()
        pytest.fail(
            f"job not finished {WAIT_S}s after {victim.name} was killed ({meta.done}/{meta.total} branches "
            f"done): the killed worker's unacked messages were not redelivered in time (the broker "
            f"transport's unacked_restore_interval / unacked_restore_throttle decide how often a live "
            f"worker sweeps for them)"
        )
    elapsed = time.monotonic() - started

    assert result.status is JobStatus.SUCCEEDED, result.error
    assert [o.key for o in result.outcomes] == keys
    for outcome in result.outcomes:
        assert outcome.status is OutcomeStatus.SUCCEEDED, (outcome.key, outcome.error)
        assert outcome.output == outcome.key
    assert result.merged == keys
    assert handle.progress().merges == 1

    counts = {key: calls(str(counter_dir), key) for key in keys}
    assert all(count >= 1 for count in counts.values()), counts
    assert sum(counts.values()) >= BRANCHES
    assert any(o.worker == survivor_hostname for o in result.outcomes)

    deliveries = {
        str(field).rsplit(":", 1)[0]: int(count)
        for field, count in store.client.hgetall(store.keys(handle.job_id).deliveries).items()
    }
    # A branch the victim had started but did not finish came back and was finished by the survivor.
    redelivered = sorted(key for key in in_flight if result.outcome(key).worker == survivor_hostname)
    assert redelivered, f"no branch the killed worker had started ({sorted(in_flight)}) was redelivered"
    for key in redelivered:
        assert deliveries[key] >= 2, (key, deliveries)
        assert counts[key] >= 2, (key, counts)

    twice = sorted(key for key, count in counts.items() if count > 1)
    print(  # reported with -s / -rP: at-least-once delivery re-ran these branches
        f"\nkilled {victim.name} (pid {victim.pid}) after {killed_at:.1f}s with {sorted(in_flight)} started; "
        f"job done after {elapsed:.1f}s; {len(twice)} branch(es) ran more than once: {twice}; "
        f"total calls {sum(counts.values())}; deliveries>1: "
        f"{sorted(key for key, count in deliveries.items() if count > 1)}"
    )
