"""Fan-out overhead: fanflow's ``submit`` + ``wait`` against a hand-written Celery chord, in one run.

Both systems run no-op branches on the same Redis, through the same worker process (same pool, same
concurrency, same Celery settings from ``fanflow.app.celery_config``), so the difference is each
system's own overhead:

* fanflow: ``client.submit(FanOut(N x PyCall(noop)))`` then ``handle.wait()``;
* Celery: ``chord(group(noop.s() for _ in range(N)), collect.s()).apply_async()`` on a plain app
  (plain ``redis://`` result backend) then ``res.get(follow_parents=False)``.

Run from the repository root: ``python -m bench.fanout_overhead --help``.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import json
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal

import redis
from celery import Celery, chord, group

from bench.experiments import EXPERIMENTS, apply_experiments
from bench.server import redis_url
from bench.tasks import NOOP_PATH, PY_QUEUE, register_plain_tasks
from fanflow.app import CONTROL_QUEUE, celery_config, create_app
from fanflow.client import Client
from fanflow.config import Settings
from fanflow.result import JobStatus
from fanflow.spec import FanOut, PyCall, Subtask

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONCURRENCY = {"threads": 8, "prefork": 2}
System = Literal["fanflow", "celery"]
SYSTEMS: tuple[System, System] = ("fanflow", "celery")


@dataclass(frozen=True, slots=True)
class Run:
    """One measured fan-out: seconds from the start of building it to each milestone, and CPU spent."""

    system: str
    size: int
    build_s: float  # the FanOut built (the chord's lazy group is built inside apply_async)
    enqueue_s: float  # submit() / apply_async() alone
    total_s: float  # result in hand, from the start of the build
    producer_cpu_s: float = 0.0  # this process, during the run
    worker_cpu_s: float | None = None  # the worker and its pool processes, until idle again
    redis_cpu_s: float | None = None  # redis-server (INFO cpu), until the worker is idle again

    @property
    def per_branch_ms(self) -> float:
        """End-to-end milliseconds per branch."""
        return self.total_s / self.size * 1000

    @property
    def cpu_ms(self) -> tuple[float | None, float | None, float | None]:
        """CPU milliseconds per branch of the producer, the worker and Redis (None: not measurable)."""
        return tuple(  # type: ignore[return-value]
            None if seconds is None else seconds / self.size * 1000
            for seconds in (self.producer_cpu_s, self.worker_cpu_s, self.redis_cpu_s)
        )


class Bench:
    """The two producers (a fanflow client and a plain Celery app) on one Redis, and their worker."""

    def __init__(self, url: str, settings: Settings, args: argparse.Namespace) -> None:
        self.url = url
        self.settings = settings
        self.args = args
        self.client = Client(create_app(settings))
        self.plain = Celery("bench-plain", broker=url, backend=url, set_as_current=False)
        plain_config = celery_config(settings)
        # The baseline publishes through kombu's own Redis transport, as a plain Celery app does;
        # fanflow's transport (one client object per channel) is part of what is measured.
        plain_config.pop("broker_transport", None)
        self.plain.conf.update(plain_config)
        self.noop, self.collect = register_plain_tasks(self.plain)
        self.redis = redis.Redis.from_url(url, socket_timeout=30)
        self.worker: subprocess.Popen[bytes] | None = None
        self.worker_name = f"bench-{secrets.token_hex(3)}@%h"
        self.worker_log = tempfile.NamedTemporaryFile(prefix="fanflow-bench-worker-", suffix=".log")  # noqa: SIM115

    # --- the worker -----------------------------------------------------------------------------

    def start_worker(self) -> None:
        """Start the one worker process and wait until it answers a ping (startup is never timed)."""
        env = dict(os.environ)
        env.update(
            FANFLOW_BROKER_URL=self.url,
            FANFLOW_RESULT_BACKEND=self.url,
            FANFLOW_STORE_URL=self.url,
            FANFLOW_KEY_PREFIX=self.settings.key_prefix,
            FANFLOW_TASK_EVENTS=str(self.settings.task_events).lower(),
            BENCH_EXPERIMENTS=",".join(self.args.experiment),
            PYTHONPATH=os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")])),
        )
        argv = [
            *(sys.executable, "-m", "celery", "-A", "bench.apps", "worker"),
            *("-Q", f"{PY_QUEUE},{CONTROL_QUEUE}", "-P", self.args.pool, "-c", str(self.args.concurrency)),
            *("-n", self.worker_name, "--without-mingle", "--without-gossip", "--loglevel", "WARNING"),
        ]
        # Its own session, so a worker that ignores SIGTERM can be killed with its pool children.
        self.worker = subprocess.Popen(
            argv,
            cwd=REPO_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self.worker_log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        hostname = self.worker_name.replace("%h", os.uname().nodename)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.worker.poll() is not None:
                raise RuntimeError(f"the worker exited ({self.worker.returncode}):\n{self.worker_tail()}")
            if self.plain.control.ping(destination=[hostname], timeout=0.5):
                return
        raise RuntimeError(f"the worker did not answer a ping within 60s:\n{self.worker_tail()}")

    def stop_worker(self) -> None:
        """Stop the worker (warm shutdown, then SIGKILL to its process group)."""
        worker, self.worker = self.worker, None
        if worker is None or worker.poll() is not None:
            return
        worker.terminate()
        try:
            worker.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(worker.pid, signal.SIGKILL)
            worker.wait()

    def worker_tail(self, lines: int = 30) -> str:
        """The last lines the worker wrote."""
        text = Path(self.worker_log.name).read_text(encoding="utf-8", errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def wait_idle(self, timeout: float = 120.0) -> None:
        """Return once both queues are empty and no message is unacknowledged (the worker is idle)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pipe = self.redis.pipeline(transaction=False)
            pipe.llen(PY_QUEUE)
            pipe.llen(CONTROL_QUEUE)
            pipe.hlen("unacked")  # kombu's Redis transport: delivered, not yet acknowledged
            if not any(pipe.execute()):
                return
            time.sleep(0.05)
        raise RuntimeError("the queues did not drain: is another worker or producer using this Redis?")

    def worker_cpu(self) -> float | None:
        """CPU seconds used so far by the worker and its pool processes (None where /proc is missing)."""
        return None if self.worker is None else _process_tree_cpu(self.worker.pid)

    def redis_cpu(self) -> float | None:
        """CPU seconds used so far by redis-server (None if INFO is not allowed)."""
        try:
            info: dict[str, Any] = self.redis.info("cpu")
        except redis.RedisError:
            return None
        return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])

    # --- the two systems ------------------------------------------------------------------------

    def run_fanflow(self, size: int) -> Run:
        """``client.submit(FanOut(...))`` then ``handle.wait()``."""
        start = time.perf_counter()
        spec = FanOut(
            name=f"bench-{size}",
            subtasks=[Subtask(key=f"b{index}", run=PyCall(function=NOOP_PATH)) for index in range(size)],
        )
        built = time.perf_counter()
        handle = self.client.submit(spec)
        enqueued = time.perf_counter()
        result = handle.wait(timeout=self.args.timeout)
        done = time.perf_counter()
        if result.status is not JobStatus.SUCCEEDED or len(result.outcomes) != size:
            raise RuntimeError(
                f"fanflow job {handle.job_id}: {result.status.value}, {len(result.outcomes)} outcomes"
            )
        return Run("fanflow", size, built - start, enqueued - built, done - start)

    def run_celery(self, size: int) -> Run:
        """``chord(group(noop.s() ...), collect.s()).apply_async()``, then ``res.get()``."""
        start = time.perf_counter()
        canvas = chord(group(self.noop.s() for _ in range(size)), self.collect.s())
        built = time.perf_counter()
        res = canvas.apply_async()
        enqueued = time.perf_counter()
        value = res.get(follow_parents=False, timeout=self.args.timeout)
        done = time.perf_counter()
        if value != size:
            raise RuntimeError(f"celery chord {res.id}: the body saw {value} results, expected {size}")
        return Run("celery", size, built - start, enqueued - built, done - start)

    def run(self, system: System, size: int) -> Run:
        """One measured run of ``system`` at ``size``, started on an idle worker, with CPU accounting."""
        self.wait_idle()
        worker, server, producer = self.worker_cpu(), self.redis_cpu(), time.process_time()
        run = self.run_fanflow(size) if system == "fanflow" else self.run_celery(size)
        producer = time.process_time() - producer
        self.wait_idle()  # the worker's acks and events after the result still belong to this run
        worker_after, server_after = self.worker_cpu(), self.redis_cpu()
        return replace(
            run,
            producer_cpu_s=producer,
            worker_cpu_s=None if worker is None or worker_after is None else worker_after - worker,
            redis_cpu_s=None if server is None or server_after is None else server_after - server,
        )

    # --- profiling ------------------------------------------------------------------------------

    def profile(self, system: System, size: int, directory: Path) -> None:
        """An extra, untimed run under cProfile (producer) and py-spy (worker), written to ``directory``."""
        spy_binary = shutil.which("py-spy")
        if spy_binary is None:
            raise RuntimeError("--profile needs py-spy on PATH (pip install py-spy)")
        assert self.worker is not None
        directory.mkdir(parents=True, exist_ok=True)
        self.wait_idle()
        spy_out = directory / f"worker-{system}-{size}.txt"
        # --gil: only the thread holding the GIL, so samples are CPU spent in Python, per function.
        spy = subprocess.Popen(
            [
                *(spy_binary, "record", "--pid", str(self.worker.pid), "--subprocesses", "--gil"),
                *("--threads", "--rate", "250", "--format", "raw", "--output", str(spy_out)),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(1.0)  # py-spy attaches
        profiler = cProfile.Profile()
        profiler.enable()
        try:
            self.run_fanflow(size) if system == "fanflow" else self.run_celery(size)
        finally:
            profiler.disable()
            spy.send_signal(signal.SIGINT)
            try:
                spy.wait(timeout=30)
            except subprocess.TimeoutExpired:
                spy.kill()
                spy.wait()
        pstats_out = directory / f"producer-{system}-{size}.pstats"
        profiler.dump_stats(pstats_out)
        print(
            f"  profiled {system} N={size}: {pstats_out.name} (cProfile), {spy_out.name} (py-spy raw stacks)"
        )


def _process_tree_cpu(pid: int) -> float | None:
    """User + system CPU seconds of ``pid`` and its descendants, from Linux's /proc."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii")
        children = [
            int(child)
            for task in Path(f"/proc/{pid}/task").iterdir()
            for child in (task / "children").read_text(encoding="ascii").split()
        ]
    except OSError:
        return None
    fields = stat.rpartition(")")[2].split()  # after the command name, which may hold spaces
    total = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime
    return total + sum(_process_tree_cpu(child) or 0.0 for child in children)


# --- reporting ------------------------------------------------------------------------------------


def pick(runs: list[Run], stat: str) -> Run:
    """The best (fastest) run, or the run with the (lower) median end-to-end time."""
    ordered = sorted(runs, key=lambda run: run.total_s)
    return ordered[0] if stat == "best" else ordered[(len(ordered) - 1) // 2]


def _median(values: list[float | None]) -> float | None:
    known = [value for value in values if value is not None]
    return statistics.median(known) if known and len(known) == len(values) else None


def _cell(value: float | None, width: int = 6) -> str:
    return f"{value:>{width}.3f}" if value is not None else f"{'n/a':>{width}}"


def report(runs: list[Run], sizes: list[int], stat: str, header: str) -> None:
    """Print the wall-clock table, the CPU table and the two targets."""
    chosen = {
        (system, size): pick([r for r in runs if r.system == system and r.size == size], stat)
        for system in SYSTEMS
        for size in sizes
    }
    print(f"\n{header}")
    columns = (
        f"{'N':>6} | {'fanflow s':>9} {'celery s':>9} {'ratio':>6} {'paired':>6} | "
        f"{'ff ms/br':>8} {'cel ms/br':>9} | "
        f"{'ff enq s':>8} {'cel enq s':>9} {'enq ratio':>9} | {'ff build':>8}"
    )
    print(f"{columns}\n{'-' * len(columns)}")
    for size in sizes:
        ff, cel = chosen["fanflow", size], chosen["celery", size]
        # Each repeat runs both systems back to back: their ratio is immune to the machine's drift.
        pairs = zip(
            [r for r in runs if r.system == "fanflow" and r.size == size],
            [r for r in runs if r.system == "celery" and r.size == size],
            strict=True,
        )
        paired = _median([a.total_s / b.total_s for a, b in pairs])
        paired_text = f"{paired:>6.2f}" if paired is not None else f"{'n/a':>6}"
        print(
            f"{size:>6} | {ff.total_s:>9.3f} {cel.total_s:>9.3f} {ff.total_s / cel.total_s:>6.2f} "
            f"{paired_text} | "
            f"{ff.per_branch_ms:>8.3f} {cel.per_branch_ms:>9.3f} | "
            f"{ff.enqueue_s:>8.3f} {cel.enqueue_s:>9.3f} {ff.enqueue_s / cel.enqueue_s:>9.2f} | "
            f"{ff.build_s:>8.3f}"
        )
    print(
        "s: end to end, from building the fan-out to holding the result; ratio: of the reported runs;\n"
        "paired: median over repeats of the ratio of the two back-to-back runs; ms/br: s per branch;\n"
        "enq: submit() / apply_async() alone; build: the FanOut (celery builds its lazy group in apply_async)"
    )
    report_cpu(runs, sizes)
    ratios = [chosen["fanflow", n].total_s / chosen["celery", n].total_s for n in sizes]
    verdict = "met" if max(ratios) <= 1.0 else "MISSED"
    print(f"\ntarget fanflow/celery <= 1.0 at every N: {verdict} (worst {max(ratios):.3f})")
    if len(sizes) > 1:
        small, large = min(sizes), max(sizes)
        for system in SYSTEMS:
            growth = chosen[system, large].per_branch_ms / chosen[system, small].per_branch_ms
            target = ""
            if system == "fanflow":
                target = f" (target <= 1.3: {'met' if growth <= 1.3 else 'MISSED'})"
            print(f"{system} per-branch cost at N={large} / at N={small}: {growth:.2f}{target}")


def report_cpu(runs: list[Run], sizes: list[int]) -> None:
    """Print CPU milliseconds per branch (medians over the runs): the overhead without scheduling noise."""
    print(f"\nCPU ms per branch (median)  {'producer':>8} {'worker':>6} {'redis':>6} {'sum':>6} | ff/cel sum")
    for size in sizes:
        sums: dict[str, float | None] = {}
        for system in SYSTEMS:
            mine = [run.cpu_ms for run in runs if run.system == system and run.size == size]
            parts = [_median([cpu[index] for cpu in mine]) for index in range(3)]
            sums[system] = None if None in parts else sum(part or 0.0 for part in parts)
            ratio = ""
            if system == "celery" and sums["fanflow"] and sums["celery"]:
                ratio = f" | {sums['fanflow'] / sums['celery']:.2f}"
            print(
                f"  N={size:<6} {system:<7}           {_cell(parts[0], 8)} {_cell(parts[1])} "
                f"{_cell(parts[2])} {_cell(sums[system])}{ratio}"
            )


# --- main -----------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.fanout_overhead",
        description=(
            "Measure fanflow's fan-out/fan-in overhead against a hand-written Celery chord of no-op tasks, "
            "on one Redis and one worker process serving both. Prints end-to-end seconds, the "
            "fanflow/celery ratio and ms per branch for each N, enqueue time on its own, and CPU ms per "
            "branch of the producer, the worker and Redis."
        ),
        epilog=(
            "Use a Redis (or database number) of its own: the worker consumes fanflow's default queues and "
            "each run waits for them to be empty. Targets: ratio <= 1.0 at every N; fanflow's ms per branch "
            "at the largest N within 1.3x of the smallest."
        ),
    )
    add = parser.add_argument
    add("--sizes", default="100,1000,5000", help="comma-separated fan-out sizes (default: %(default)s)")
    add("--repeat", type=int, default=2, help="measured runs per system and size (default: %(default)s)")
    add("--stat", choices=["best", "median"], default="best", help="which run to report (default: best)")
    add(
        "--redis-url",
        default=os.environ.get("FANFLOW_BENCH_REDIS_URL"),
        help="Redis for broker, results and job store (default: $FANFLOW_BENCH_REDIS_URL, else embedded)",
    )
    add(
        "--pool",
        choices=sorted(DEFAULT_CONCURRENCY),
        default="threads",
        help="worker pool (default: threads)",
    )
    add("--concurrency", type=int, help="worker concurrency (default: 8 for threads, 2 for prefork)")
    add(
        "--task-events",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="Celery task events for both systems, fanflow's default (default: on)",
    )
    add("--warmup-size", type=int, default=50, help="size of the untimed warm-up run of each system")
    add("--timeout", type=float, default=600.0, help="seconds one run may take (default: %(default)s)")
    add(
        "--experiment",
        action="append",
        default=[],
        choices=sorted(EXPERIMENTS),
        metavar="NAME",
        help="apply a candidate fanflow patch to fanflow's side (repeatable): "
        + "; ".join(f"{name}: {description}" for name, (description, _, _) in sorted(EXPERIMENTS.items())),
    )
    add(
        "--profile",
        type=Path,
        metavar="DIR",
        help="then profile one more run of each system at the largest N into DIR "
        "(producer: cProfile; worker: py-spy, which must be installed)",
    )
    add("--json", type=Path, metavar="FILE", help="also write the settings and every run as JSON to FILE")
    args = parser.parse_args(argv)
    try:
        args.sizes = sorted({int(size) for size in args.sizes.split(",") if size.strip()})
    except ValueError:
        parser.error(f"--sizes: expected comma-separated integers, got {args.sizes!r}")
    if not args.sizes or min(args.sizes) < 1 or args.repeat < 1 or args.warmup_size < 1:
        parser.error("--sizes, --repeat and --warmup-size must be positive")
    args.concurrency = args.concurrency or DEFAULT_CONCURRENCY[args.pool]
    return args


def measure(bench: Bench, args: argparse.Namespace) -> list[Run]:
    """Warm up, then run each size ``repeat`` times per system, alternating which system goes first."""
    for system in SYSTEMS:
        bench.run(system, args.warmup_size)
    runs: list[Run] = []
    for size in args.sizes:
        for repeat in range(args.repeat):
            for system in SYSTEMS if repeat % 2 == 0 else SYSTEMS[::-1]:
                run = bench.run(system, size)
                runs.append(run)
                print(
                    f"  {system:<7} N={size:<6} total {run.total_s:7.3f}s  enqueue {run.enqueue_s:6.3f}s  "
                    f"{run.per_branch_ms:6.3f} ms/branch",
                    flush=True,
                )
    return runs


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; 0 when every run completed (whether or not the targets were met)."""
    args = parse_args(argv)
    args.experiment = apply_experiments(args.experiment)
    with redis_url(args.redis_url) as (url, where):
        base = Settings(key_prefix=f"fanflow-bench-{secrets.token_hex(4)}", task_events=args.task_events)
        bench = Bench(url, base.with_redis(url), args)
        header = (
            f"worker: 1 process, -P {args.pool} -c {args.concurrency} (both systems); redis: {where}; "
            f"task events: {'on' if args.task_events else 'off'}; {args.stat} of {args.repeat} run(s); "
            f"experiments: {', '.join(args.experiment) or 'none'}"
        )
        print(header, flush=True)
        try:
            bench.start_worker()
            runs = measure(bench, args)
            report(runs, args.sizes, args.stat, header)
            if args.json:
                settings = {key: value for key, value in vars(args).items() if key not in {"json", "profile"}}
                document = {"settings": settings, "runs": [asdict(run) for run in runs]}
                args.json.write_text(json.dumps(document, indent=2, default=str), encoding="utf-8")
            if args.profile:
                for system in SYSTEMS:
                    bench.profile(system, max(args.sizes), args.profile)
        finally:
            bench.stop_worker()
            bench.worker_log.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
