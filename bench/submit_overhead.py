"""Producer blocking time: fanflow's ``submit()`` against plain Celery's ``chord(...).apply_async()``.

For each N, on the same Redis and with no worker running (only the producer is measured):

* fanflow: ``client.submit(FanOut(N x PyCall(noop)))``: validation, the job store, the chord size and
  every header message (pipelined, built from one template);
* Celery: ``chord(group([noop.s() for _ in range(N)]), collect.s()).apply_async()`` on a plain
  ``Celery(broker=url, backend=url)`` with Celery's own defaults (the signatures are built before the
  clock starts, as the FanOut is).

Each run's messages are checked (N in the queue list, the chord size set) and deleted afterwards.
Producer memory: the peak of Python allocations during the call (tracemalloc, in an extra untimed
run of each system) and the process's peak RSS.

Run from the repository root: ``python -m bench.submit_overhead [--sizes 10000] [--smoke]``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import secrets
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import redis
from celery import Celery, chord, group

from bench.server import redis_url
from bench.tasks import NOOP_PATH, PY_QUEUE, register_plain_tasks
from fanflow.app import create_app
from fanflow.canvas import group_id
from fanflow.client import Client
from fanflow.config import Settings
from fanflow.spec import FanOut, PyCall, Subtask

System = Literal["fanflow", "celery"]
SYSTEMS: tuple[System, System] = ("fanflow", "celery")
#: The requirement: submit() blocks the producer at most this fraction of Celery's apply_async().
TARGET_RATIO = 0.25
TARGET_RSS_MB = 300.0


@dataclass(frozen=True, slots=True)
class Run:
    """One measured call: seconds the producer was blocked, and (memory runs) its allocation peak."""

    system: str
    size: int
    seconds: float
    traced_peak_mb: float | None = None


class Bench:
    """A fanflow client and a plain Celery app on one Redis; each run cleaned up after itself."""

    def __init__(self, url: str, settings: Settings) -> None:
        self.client = Client(create_app(settings))
        self.plain = Celery("bench-plain", broker=url, backend=url, set_as_current=False)
        self.noop, self.collect = register_plain_tasks(self.plain)
        self.redis = redis.Redis.from_url(url, socket_timeout=60)
        self.prefix = settings.key_prefix

    def close(self) -> None:
        """Release the connections.

        A plain Celery producer subscribes to every task's result channel and keeps the pending
        results; they would unsubscribe when collected at exit, after the embedded Redis is gone (and
        retry for 20 s). Close the subscription while Redis is up and forget what it was subscribed to.
        """
        consumer: Any = getattr(self.plain.backend, "result_consumer", None)
        if consumer is not None:
            consumer.stop()
            consumer.subscribed_to.clear()
        self.redis.close()
        self.plain.close()
        self.client.app.close()

    def run(self, system: System, size: int, *, trace: bool = False) -> Run:
        """One call of ``system`` at ``size``; with ``trace``, under tracemalloc (then not timed)."""
        call, cleanup = self.prepare_fanflow(size) if system == "fanflow" else self.prepare_celery(size)
        if trace:
            tracemalloc.start()
        try:
            start = time.perf_counter()
            group_key = call()
            seconds = time.perf_counter() - start
            peak = tracemalloc.get_traced_memory()[1] / 2**20 if trace else None
        finally:
            if trace:
                tracemalloc.stop()
        try:
            queued, chord_size = (
                self.redis.llen(PY_QUEUE),
                self.redis.get(f"celery-taskset-meta-{group_key}.s"),
            )
            if queued != size or chord_size is None or int(chord_size) != size:
                raise RuntimeError(f"{system} N={size}: {queued} messages queued, chord size {chord_size!r}")
        finally:
            cleanup(group_key)
        return Run(system, size, seconds, peak)

    def prepare_fanflow(self, size: int) -> tuple[Callable[[], str], Callable[[str], None]]:
        """``client.submit(spec)`` for a spec built beforehand; returns the chord's group id."""
        spec = FanOut(
            name=f"bench-{size}",
            subtasks=[Subtask(key=f"b{index}", run=PyCall(function=NOOP_PATH)) for index in range(size)],
        )

        def call() -> str:
            return group_id(self.client.submit(spec).job_id, 0)

        return call, self.cleanup

    def prepare_celery(self, size: int) -> tuple[Callable[[], str], Callable[[str], None]]:
        """``chord(group([...]), collect.s()).apply_async()`` for signatures built beforehand."""
        canvas = chord(group([self.noop.s() for _ in range(size)]), self.collect.s())

        def call() -> str:
            result = canvas.apply_async()
            return str(result.parent.id)

        return call, self.cleanup

    def cleanup(self, group_key: str) -> None:
        """Delete the run's messages, its chord keys and fanflow's job keys."""
        keys = [PY_QUEUE, f"celery-taskset-meta-{group_key}.s", f"celery-taskset-meta-{group_key}.c"]
        keys += list(self.redis.scan_iter(match=f"{self.prefix}*", count=1000))
        self.redis.delete(*keys)
        gc.collect()  # Celery's result objects (reference cycles) unsubscribe from their channels


def peak_rss_mb() -> float:
    """This process's peak resident set size so far (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.submit_overhead",
        description=(
            "How long fanflow's submit() blocks the producer, against plain Celery's "
            "chord(group(...), body).apply_async() for the same N on the same Redis (no worker runs), "
            "and the producer's memory."
        ),
    )
    add = parser.add_argument
    add("--sizes", default="10000", help="comma-separated fan-out sizes (default: %(default)s)")
    add("--repeat", type=int, default=3, help="timed runs per system and size (default: %(default)s)")
    add("--stat", choices=["best", "median"], default="median", help="which run to report (default: median)")
    add(
        "--redis-url",
        default=os.environ.get("FANFLOW_BENCH_REDIS_URL"),
        help="Redis to use, no worker on it (default: $FANFLOW_BENCH_REDIS_URL, else an embedded one)",
    )
    add("--no-memory", action="store_true", help="skip the tracemalloc runs")
    add("--smoke", action="store_true", help="a tiny run for CI: N=200, one repeat")
    add("--json", type=Path, metavar="FILE", help="also write every run as JSON to FILE")
    args = parser.parse_args(argv)
    if args.smoke:
        args.sizes, args.repeat = "200", 1
    try:
        args.sizes = sorted({int(size) for size in args.sizes.split(",") if size.strip()})
    except ValueError:
        parser.error(f"--sizes: expected comma-separated integers, got {args.sizes!r}")
    if not args.sizes or min(args.sizes) < 1 or args.repeat < 1:
        parser.error("--sizes and --repeat must be positive")
    return args


def measure(bench: Bench, args: argparse.Namespace) -> tuple[list[Run], dict[str, float]]:
    """Warm up, then the timed runs (fanflow's first, for its RSS), then the memory runs."""
    for system in SYSTEMS:
        bench.run(system, 50)
    runs: list[Run] = []
    rss: dict[str, float] = {"start": peak_rss_mb()}
    for system in SYSTEMS:
        for size in args.sizes:
            for _ in range(args.repeat):
                run = bench.run(system, size)
                runs.append(run)
                print(f"  {system:<7} N={size:<6} {run.seconds:8.3f} s", flush=True)
        rss[system] = peak_rss_mb()
    if not args.no_memory:
        for system in SYSTEMS:
            for size in args.sizes:
                runs.append(bench.run(system, size, trace=True))
    return runs, rss


def report(runs: list[Run], rss: dict[str, float], args: argparse.Namespace, header: str) -> bool:
    """Print the table; True when every target was met."""

    def seconds(system: str, size: int) -> float:
        timed = sorted(
            r.seconds for r in runs if r.system == system and r.size == size and r.traced_peak_mb is None
        )
        return timed[0] if args.stat == "best" else statistics.median(timed)

    def traced(system: str, size: int) -> str:
        peaks = [r.traced_peak_mb for r in runs if r.system == system and r.size == size and r.traced_peak_mb]
        return f"{peaks[0]:>8.1f}" if peaks else f"{'n/a':>8}"

    print(f"\n{header}")
    columns = (
        f"{'N':>6} | {'fanflow submit s':>16} {'celery apply_async s':>20} {'ratio':>6} | "
        f"{'ff peak MB':>10} {'cel peak MB':>11}"
    )
    print(f"{columns}\n{'-' * len(columns)}")
    met = True
    for size in args.sizes:
        ff, cel = seconds("fanflow", size), seconds("celery", size)
        met = met and ff / cel <= TARGET_RATIO
        print(
            f"{size:>6} | {ff:>16.3f} {cel:>20.3f} {ff / cel:>6.3f} | {traced('fanflow', size):>10} "
            f"{traced('celery', size):>11}"
        )
    print(
        f"s: {args.stat} of {args.repeat} run(s), the producer blocked in the call; ratio: fanflow / celery; "
        "peak MB: Python allocations during the call (tracemalloc, an extra untimed run)"
    )
    rss_met = rss["fanflow"] <= TARGET_RSS_MB
    print(
        f"producer peak RSS: {rss['start']:.0f} MB before, {rss['fanflow']:.0f} MB after the fanflow runs, "
        f"{rss['celery']:.0f} MB after the celery runs"
    )
    print(f"target ratio <= {TARGET_RATIO} at every N: {'met' if met else 'MISSED'}")
    print(f"target producer RSS < {TARGET_RSS_MB:.0f} MB (fanflow runs): {'met' if rss_met else 'MISSED'}")
    return met and rss_met


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; 0 when every run completed (whether or not the targets were met)."""
    args = parse_args(argv)
    with redis_url(args.redis_url) as (url, where):
        settings = Settings(key_prefix=f"fanflow-bench-{secrets.token_hex(4)}").with_redis(url)
        bench = Bench(url, settings)
        header = f"redis: {where}; no worker; celery: its own defaults; fanflow: its defaults"
        print("measuring ...", flush=True)
        try:
            runs, rss = measure(bench, args)
        finally:
            bench.close()
        report(runs, rss, args, header)
        if args.json:
            document: dict[str, Any] = {
                "settings": {key: value for key, value in vars(args).items() if key != "json"},
                "runs": [asdict(run) for run in runs],
                "peak_rss_mb": rss,
            }
            args.json.write_text(json.dumps(document, indent=2, default=str), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
