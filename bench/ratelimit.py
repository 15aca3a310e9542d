"""Shared rate limits under load: how fast one hot limit key admits, across processes and threads.

``hot-key``: P processes x T threads (default 3 x 50) loop ``acquire`` (one limit key with
requests, tokens and concurrency limits far too high to bind) then ``settle``, for a few seconds.
It prints admissions per second and the decision latency (the ``acquire`` round trip, as the
calling thread sees it: script, network, connection pool and the GIL) at p50 / p99 / max, and
checks that no acquire was refused.

Parts are named in ``PARTS``; each takes the Redis URL and the parsed arguments and returns whether
it met its targets, so a comparison with Celery's ``rate_limit`` can be added as another part.

Run from the repository root: ``python -m bench.ratelimit [--seconds 5] [--smoke]``
(``--redis-url`` or ``$FANFLOW_BENCH_REDIS_URL``, else an embedded ``redis-server``).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import random
import secrets
import statistics
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import redis

from bench.rate_compare import compare
from bench.server import redis_url
from fanflow.ratelimit import Admission, Limit, Limiter

TARGET_RATE = 2000.0
TARGET_P99_MS = 10.0
HOT_KEY = "bench:hot"


@dataclass(frozen=True, slots=True)
class WorkerReport:
    """What one process measured: admissions, refusals and every decision latency (s)."""

    admitted: int
    refused: int
    elapsed_s: float
    latencies: list[float]


def _hot_key_process(
    url: str, prefix: str, threads: int, seconds: float, call_s: float, start_at: float
) -> WorkerReport:
    """One process: ``threads`` threads acquiring the hot key, "calling" for ``call_s``, settling."""
    pool = redis.BlockingConnectionPool.from_url(url, max_connections=threads + 2, timeout=30)
    limiter = Limiter(redis.Redis(connection_pool=pool), prefix=prefix)
    latencies: list[list[float]] = [[] for _ in range(threads)]
    counts = [[0, 0] for _ in range(threads)]

    def loop(index: int) -> None:
        mine, count = latencies[index], counts[index]
        while time.time() < start_at:
            time.sleep(0.001)
        time.sleep(call_s * random.random())  # threads start spread over one call, not in a burst
        stop = start_at + seconds
        while True:
            begin = time.perf_counter()
            if time.time() >= stop:
                return
            result = limiter.acquire([HOT_KEY], input_tokens=100, output_tokens=50)
            mine.append(time.perf_counter() - begin)
            if isinstance(result, Admission):
                count[0] += 1
                if call_s:  # calls last 0.5x to 1.5x call_s, as real calls vary
                    time.sleep(call_s * (0.5 + random.random()))
                limiter.settle(result, input_tokens=80, output_tokens=40)
            else:
                count[1] += 1

    workers = [threading.Thread(target=loop, args=(index,), daemon=True) for index in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    elapsed = time.time() - start_at
    pool.disconnect()
    return WorkerReport(
        admitted=sum(c[0] for c in counts),
        refused=sum(c[1] for c in counts),
        elapsed_s=elapsed,
        latencies=[value for mine in latencies for value in mine],
    )


def _percentile(sorted_values: list[float], fraction: float) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[min(int(fraction * len(sorted_values)), len(sorted_values) - 1)]


def hot_key(url: str, args: argparse.Namespace) -> bool:
    """The hot-key part: each admitted thread "calls" for ``--call-ms``, then settles."""
    return _hot_key(url, args, args.call_ms / 1000, targets=True)


def capacity(url: str, args: argparse.Namespace) -> bool:
    """Flat out: acquire then settle at once, no call between: what the limiter sustains."""
    return _hot_key(url, args, 0.0, targets=False)


def _hot_key(url: str, args: argparse.Namespace, call_s: float, *, targets: bool) -> bool:
    """Admissions/s and decision latency on one key; True when the targets hold."""
    prefix = f"fanflow-bench-rl-{secrets.token_hex(4)}"
    client = redis.Redis.from_url(url)
    limiter = Limiter(client, prefix=prefix)
    limiter.set_limit(Limit(key=HOT_KEY, requests=10**9, tokens=10**12, concurrency=10**6, window_s=1))
    print(
        f"{'hot-key' if targets else 'capacity'}: {args.processes} processes x {args.threads} threads, "
        f"acquire, {call_s * 1000:g} ms call, settle, for {args.seconds:g} s on one key "
        "(requests, tokens, concurrency; never binding)",
        flush=True,
    )
    start_at = time.time() + 1.0 + 0.2 * args.processes  # every process is up and connected
    context = multiprocessing.get_context("spawn")
    with context.Pool(args.processes) as pool:
        reports = pool.starmap(
            _hot_key_process,
            [(url, prefix, args.threads, args.seconds, call_s, start_at)] * args.processes,
        )
    status = limiter.status(HOT_KEY)
    limiter.delete_limit(HOT_KEY)
    client.close()
    admitted = sum(report.admitted for report in reports)
    refused = sum(report.refused for report in reports)
    elapsed = max(report.elapsed_s for report in reports)
    latencies = sorted(value for report in reports for value in report.latencies)
    rate = admitted / elapsed
    p50, p99 = _percentile(latencies, 0.50) * 1000, _percentile(latencies, 0.99) * 1000
    print(f"  admitted {admitted} in {elapsed:.2f} s: {rate:,.0f} admissions/s; refused {refused}")
    print(
        f"  decision latency: p50 {p50:.2f} ms, p99 {p99:.2f} ms, max {latencies[-1] * 1000:.1f} ms "
        f"(mean {statistics.fmean(latencies) * 1000:.2f} ms)"
    )
    if status is not None:
        print(f"  in flight at the end: {status.in_flight} (every admission settled: expected 0)")
    met = rate >= TARGET_RATE and p99 <= TARGET_P99_MS and refused == 0
    if not targets:
        print(f"  (closed loop, no call: latency ~ {args.processes * args.threads} threads / throughput)")
        return refused == 0
    print(
        f"  target >= {TARGET_RATE:,.0f} admissions/s, p99 <= {TARGET_P99_MS:g} ms, no refusal: "
        f"{'met' if met else 'MISSED'}",
        flush=True,
    )
    return met


#: Every part of the benchmark, in the order they run.
PARTS: dict[str, Callable[[str, argparse.Namespace], bool]] = {
    "hot-key": hot_key, "capacity": capacity, "vs-celery": compare,
}  # fmt: skip


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.ratelimit",
        description="fanflow's shared rate limits under load: admissions/s and decision latency.",
    )
    add = parser.add_argument
    add("--parts", default=",".join(PARTS), help="comma-separated parts to run (default: %(default)s)")
    add("--processes", type=int, default=3, help="processes acquiring (default: %(default)s)")
    add("--threads", type=int, default=50, help="threads per process (default: %(default)s)")
    add(
        "--call-ms",
        type=float,
        default=50.0,
        help="hot-key: how long an admitted call lasts before it settles (default: %(default)s)",
    )
    add("--seconds", type=float, default=5.0, help="how long each process acquires (default: %(default)s)")
    add(
        "--redis-url",
        default=os.environ.get("FANFLOW_BENCH_REDIS_URL"),
        help="Redis to use (default: $FANFLOW_BENCH_REDIS_URL, else an embedded one)",
    )
    add("--rate", type=int, default=10, help="vs-celery: the limit, per second (default: %(default)s)")
    add("--tasks", type=int, default=200, help="vs-celery: tasks per system (default: %(default)s)")
    add("--smoke", action="store_true", help="a short run for CI (about 1 s a part; vs-celery: 20 tasks)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.seconds = 1.0
        args.tasks = 20
    args.parts = [part.strip() for part in args.parts.split(",") if part.strip()]
    unknown = [part for part in args.parts if part not in PARTS]
    if unknown:
        parser.error(f"--parts: unknown {', '.join(unknown)} (known: {', '.join(PARTS)})")
    if args.processes < 1 or args.threads < 1 or args.seconds <= 0:
        parser.error("--processes, --threads and --seconds must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the parts; 0 when every part completed (whether or not the targets were met)."""
    args = parse_args(argv)
    with redis_url(args.redis_url) as (url, where):
        print(f"redis: {where}; {os.cpu_count()} CPUs", flush=True)
        for part in args.parts:
            PARTS[part](url, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
