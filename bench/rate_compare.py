"""The same rate limit through fanflow's limiter and through Celery's ``rate_limit``, three workers.

Three ``celery -A bench.apps worker`` processes (threads pool) serve both systems. Each system
gets N tasks that append their start time to a file:

* Celery: ``group(bench.stamp.s(path) ...)`` where ``bench.stamp`` has ``rate_limit="<L>/s"`` —
  which Celery applies per worker instance;
* fanflow: a ``FanOut`` of N ``PyCall(bench.tasks:stamp)`` branches with ``limits=["bench:rate"]``
  and ``fanflow limits set bench:rate --requests L --per 1s`` — held across every worker.

For each it prints the busiest one-second window over L and the sustained rate (starts per
second between the first and the last start) over L. Targets: fanflow <= 1.0 and >= 0.95.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from celery import group

from bench.tasks import STAMP_PATH, STAMP_QUEUE, STAMP_RATE_ENV
from fanflow.app import ALL_QUEUES, create_app, limiter_of
from fanflow.client import Client
from fanflow.config import Settings
from fanflow.ratelimit import Limit
from fanflow.spec import FanOut, PyCall, Subtask

REPO_ROOT = Path(__file__).resolve().parent.parent
RATE_KEY = "bench:rate"


def _starts(path: Path) -> list[float]:
    return sorted(float(line) for line in path.read_text(encoding="utf-8").split())


def _figures(starts: list[float], rate: int) -> tuple[float, float]:
    """(busiest 1 s window / rate, sustained starts per second / rate)."""
    peak = low = 0
    for high, start in enumerate(starts):
        while start - starts[low] >= 1.0:
            low += 1
        peak = max(peak, high - low + 1)
    sustained = (len(starts) - 1) / (starts[-1] - starts[0]) if len(starts) > 1 else 0.0
    return peak / rate, sustained / rate


def _workers(
    url: str, prefix: str, rate: int, count: int, concurrency: int, logs: Path
) -> list[subprocess.Popen[bytes]]:
    env = {name: value for name, value in os.environ.items() if not name.startswith("FANFLOW_")}
    env |= {"FANFLOW_BROKER_URL": url, "FANFLOW_KEY_PREFIX": prefix, "FANFLOW_TASK_EVENTS": "false",
            "PYTHONPATH": str(REPO_ROOT), STAMP_RATE_ENV: f"{rate}/s"}  # fmt: skip
    queues = ",".join([*ALL_QUEUES, STAMP_QUEUE])
    processes = []
    for index in range(count):
        log = (logs / f"worker-{index}.log").open("wb")
        processes.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "celery",
                    "-A",
                    "bench.apps",
                    "worker",
                    "-Q",
                    queues,
                    "-P",
                    "threads",
                    "-c",
                    str(concurrency),
                    "-n",
                    f"rate{index}@%h",
                    "--without-mingle",
                    "--without-gossip",
                    "--loglevel",
                    "WARNING",
                ],
                cwd=REPO_ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        )
    return processes


def _wait_for(path: Path, count: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and len(path.read_text(encoding="utf-8").split()) >= count:
            return
        time.sleep(0.2)
    raise RuntimeError(f"only part of the {count} tasks ran within {timeout:.0f}s")


def compare(url: str, args: argparse.Namespace) -> bool:
    """Run both systems at ``--rate`` per second over three workers; True when fanflow's targets hold."""
    rate, tasks = args.rate, args.tasks
    prefix = f"fanflow-bench-rate-{os.getpid()}"
    settings = Settings(key_prefix=prefix, task_events=False).with_redis(url)
    print(f"rate limit {rate}/s, {tasks} tasks, 3 worker processes x 8 threads", flush=True)
    with tempfile.TemporaryDirectory(prefix="fanflow-rate-") as scratch:
        folder = Path(scratch)
        workers = _workers(url, prefix, rate, 3, 8, folder)
        try:
            time.sleep(4)  # every worker connected
            app = create_app(settings)
            celery_file, fanflow_file = folder / "celery.txt", folder / "fanflow.txt"
            stamp = app.signature("bench.stamp", queue=STAMP_QUEUE)
            group(stamp.clone(args=(str(celery_file),)) for _ in range(tasks)).apply_async()
            _wait_for(celery_file, tasks, timeout=tasks / rate + 60)
            limiter_of(app).set_limit(Limit(key=RATE_KEY, requests=rate, window_s=1.0))
            spec = FanOut(
                name="rate",
                subtasks=[
                    Subtask(
                        key=f"t{index}",
                        run=PyCall(function=STAMP_PATH, kwargs={"path": str(fanflow_file)}),
                        limits=[RATE_KEY],
                    )
                    for index in range(tasks)
                ],
            )
            Client(app).submit(spec).wait(timeout=tasks / rate + 120)
            rows = [("celery rate_limit", _starts(celery_file)), ("fanflow limiter", _starts(fanflow_file))]
        finally:
            for worker in workers:
                worker.terminate()
            for worker in workers:
                worker.wait(timeout=30)
    print(f"{'':20} {'peak 1 s / limit':>17} {'sustained / limit':>18}")
    met = False
    for name, starts in rows:
        peak, sustained = _figures(starts, rate)
        print(f"{name:20} {peak:17.2f} {sustained:18.2f}")
        if name.startswith("fanflow"):
            met = peak <= 1.0 and sustained >= 0.95
    print(f"  target fanflow peak <= 1.0 and sustained >= 0.95: {'met' if met else 'MISSED'}", flush=True)
    return met
