"""What crash recovery costs Redis: commands per second while 100 branches run.

Every running branch holds a lease its worker renews (one script call per job per heartbeat,
every ``lease_s / 6`` seconds), and one worker sweeps every job in progress every
``sweep_interval_s``. This starts an embedded Redis and a real in-process worker with 100 threads
(fanflow's default settings), keeps 100 branches sleeping, and reads ``INFO commandstats`` over a
window: once for one job of 100 branches, once for 100 jobs of one branch (the worst case: one
renewal and one sweep per job), against the same worker sitting idle.

Run from the repository root: ``python -m bench.heartbeat_cost [--window 15]``.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import redis

from fanflow.client import Client, JobHandle
from fanflow.config import Settings
from fanflow.embedded import EmbeddedRedis, InProcessWorker
from fanflow.spec import FanOut, PyCall, Subtask

BRANCHES = 100


def pause(seconds: float) -> None:
    """A branch that waits, as a model call does."""
    time.sleep(seconds)


def _commands(client: redis.Redis) -> dict[str, int]:
    stats: dict[str, Any] = client.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(value["calls"]) for name, value in stats.items()}


def _rate(client: redis.Redis, window_s: float) -> dict[str, float]:
    before = _commands(client)
    time.sleep(window_s)
    after = _commands(client)
    return {name: (after[name] - before.get(name, 0)) / window_s for name in after}


def _sleepers(name: str, count: int, sleep_s: float) -> FanOut:
    return FanOut(
        name=name,
        subtasks=[
            Subtask(
                key=f"s{index}",
                run=PyCall(function="bench.heartbeat_cost:pause", kwargs={"seconds": sleep_s}),
            )
            for index in range(count)
        ],
    )


def _wait_running(client: Client, handles: list[JobHandle], expected: int, timeout: float = 30) -> None:
    store = client.store
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        running = sum(int(store.client.zcard(store.keys(h.job_id).leases)) for h in handles)
        if running >= expected:
            return
        time.sleep(0.1)
    raise RuntimeError(f"only {running} of {expected} branches started")


def main() -> None:
    """Measure and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--window", type=float, default=15.0, help="seconds of each measurement")
    parser.add_argument("--verbose", action="store_true", help="also print the busiest commands")
    args = parser.parse_args()
    verbose = args.verbose
    window = args.window
    sleep_s = window + 10
    settings = Settings(task_events=False)
    rows: list[tuple[str, dict[str, float]]] = []
    with EmbeddedRedis() as server:
        client = Client.from_settings(settings.with_redis(server.url))
        probe = redis.Redis.from_url(server.url)
        with InProcessWorker(client.app, concurrency=BRANCHES):
            time.sleep(2)
            rows.append(("idle worker", _rate(probe, window)))
            for label, jobs, per_job in (
                ("1 job x 100 branches", 1, BRANCHES),
                ("100 jobs x 1 branch", BRANCHES, 1),
            ):
                handles = [client.submit(_sleepers(f"hb{index}", per_job, sleep_s)) for index in range(jobs)]
                _wait_running(client, handles, BRANCHES)
                rows.append((label, _rate(probe, window)))
                for handle in handles:
                    handle.wait(timeout=sleep_s + 60)
    idle = sum(rows[0][1].values())
    print(
        f"heartbeat every {settings.lease_s / 6:.1f}s (lease {settings.lease_s:.0f}s), "
        f"sweep every {settings.sweep_interval_s:.0f}s; {window:.0f}s windows; Redis commands per second"
    )
    print(f"{'':24} {'all':>8} {'evalsha':>8} {'above idle':>11} {'per 100 running':>16}")
    for label, rate in rows:
        total = sum(rate.values())
        extra = total - idle
        per_100 = extra if label != "idle worker" else 0.0
        print(f"{label:24} {total:8.1f} {rate.get('evalsha', 0.0):8.2f} {extra:11.2f} {per_100:16.2f}")
        if verbose:
            top = sorted(rate.items(), key=lambda item: -item[1])[:8]
            print("    " + ", ".join(f"{name} {value:.1f}" for name, value in top if value))


if __name__ == "__main__":
    main()
