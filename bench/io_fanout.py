"""I/O-bound fan-out: N model calls against one fake model server, fanflow against a plain Celery chord.

Each branch is one chat completion answered after ``--latency`` seconds by a fake model server
(``fanflow.dev.fake_llm``) running in its own process. Ideally all N calls are in flight at once and
the whole fan-out takes one latency. In one run, on one Redis (a database each), with two worker
processes per system and no other worker:

* fanflow: two ``fanflow worker -Q fanflow.llm,fanflow.control`` processes with no pool or concurrency
  flag (500 threads each, the default for model calls); the producer submits
  ``FanOut(N x Subtask(run=LLMCall(model="openai:gpt-4o-mini", prompt=f"question {i}", max_tokens=16)))``
  (concatenate merge) and waits for the result;
* plain Celery: two ``celery worker -P threads -c 500`` processes of a ``Celery(broker=url,
  backend=url)`` app with Celery's defaults, whose task POSTs to the same server with an
  ``httpx.Client`` per thread (``bench.tasks.register_plain_llm_tasks``; ``--plain-client shared``:
  one per worker process shared by its threads);
  ``chord(group(call.s(i) ...), collect.s()).apply_async().get(follow_parents=False)``.

Run from the repository root: ``python -m bench.io_fanout --help``.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
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
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO, Any, Literal
from urllib.parse import urlsplit, urlunsplit

import redis
from celery import Celery, chord, group

from bench.fanout_overhead import _process_tree_cpu
from bench.server import redis_url
from bench.tasks import register_plain_llm_tasks
from fanflow.app import CONTROL_QUEUE, QUEUES, create_app
from fanflow.client import Client
from fanflow.config import Settings
from fanflow.result import JobStatus
from fanflow.spec import FanOut, LLMCall, Subtask

REPO_ROOT = Path(__file__).resolve().parent.parent
System = Literal["fanflow", "celery"]
SYSTEMS: tuple[System, System] = ("fanflow", "celery")
#: Threads of each plain Celery worker (fanflow's workers take their own default).
PLAIN_CONCURRENCY = 500
#: Where the plain worker finds its broker and the model server (see ``plain_worker``).
PLAIN_URL_ENV = "BENCH_PLAIN_REDIS_URL"
PLAIN_MODEL_ENV = "BENCH_PLAIN_MODEL_URL"
PLAIN_CLIENT_ENV = "BENCH_PLAIN_CLIENT"
FANFLOW_QUEUES = [QUEUES["llm"], CONTROL_QUEUE]
PLAIN_QUEUE = "celery"
SPY_RATE = 200

# The fake model server's process: serves until stdin closes; answers each line on stdin ("stats",
# or "reset" to reset its counters first) with one JSON line of counters.
_SERVER_CODE = """
import json, sys
from fanflow.dev.fake_llm import FakeLLM
server = FakeLLM(port=int(sys.argv[1]), latency_s=float(sys.argv[2])).start()
print(json.dumps({"url": server.url}), flush=True)
for line in sys.stdin:
    if line.strip() == "reset":
        server.reset()
    stats = {"count": server.count, "in_flight": server.in_flight, "max_in_flight": server.max_in_flight}
    print(json.dumps(stats), flush=True)
server.stop()
"""


@dataclass(frozen=True, slots=True)
class Run:
    """One measured fan-out."""

    system: str
    size: int
    wall_s: float  # submit() / apply_async() to the result in hand
    worker_cpu_s: float | None  # all of the system's worker processes, until its queues are idle again
    redis_cpu_s: float | None  # None: not measurable (no /proc, or INFO not allowed)
    server_cpu_s: float | None  # the fake model server
    producer_cpu_s: float
    max_in_flight: int  # calls the server held at once, at most


@dataclass
class Processes:
    """Every process the benchmark started, so that all of them are stopped whatever happens."""

    started: list[tuple[str, subprocess.Popen[bytes], Path | None]] = field(default_factory=list)
    logs: list[IO[bytes]] = field(default_factory=list)

    def spawn(self, name: str, argv: list[str], env: dict[str, str], log: Path | None = None) -> Any:
        """Start ``argv`` in a session of its own (a Ctrl-C reaches the benchmark only).

        With ``log`` its output goes there; without, its stdin and stdout are pipes to this process.
        """
        stream = None
        if log is not None:
            stream = log.open("wb")
            self.logs.append(stream)
        process = subprocess.Popen(
            argv,
            cwd=REPO_ROOT,
            env=env,
            stdin=subprocess.PIPE if log is None else subprocess.DEVNULL,
            stdout=subprocess.PIPE if stream is None else stream,
            stderr=subprocess.STDOUT if stream is not None else None,
            start_new_session=True,
        )
        self.started.append((name, process, log))
        return process

    def check_alive(self) -> None:
        """Raise if one of them has exited, with the end of its log."""
        for name, process, log in self.started:
            if process.poll() is not None:
                tail = log.read_text(errors="replace")[-3000:] if log is not None and log.exists() else ""
                raise RuntimeError(f"the {name} exited ({process.returncode}):\n{tail}")

    def stop_all(self) -> None:
        """Warm shutdown (SIGTERM) of each, then SIGKILL to the process group of any still running."""
        for _, process, _ in self.started:
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    process.terminate()
        deadline = time.monotonic() + 30
        for _, process, _ in self.started:
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            for pipe in (process.stdin, process.stdout):
                if pipe is not None:
                    with contextlib.suppress(OSError):
                        pipe.close()
        self.started.clear()
        for log in self.logs:
            log.close()
        self.logs.clear()


def _with_db(url: str, db: int) -> str:
    """``url`` pointing at database ``db``."""
    parts = urlsplit(url)
    if parts.scheme in ("redis", "rediss"):
        return urlunsplit(parts._replace(path=f"/{db}"))
    query = "&".join(item for item in parts.query.split("&") if item and not item.startswith("db="))
    return urlunsplit(parts._replace(query=f"{query}&db={db}" if query else f"db={db}"))


def _db_of(url: str) -> int:
    parts = urlsplit(url)
    if parts.scheme in ("redis", "rediss"):
        return int(parts.path.strip("/") or 0)
    for item in parts.query.split("&"):
        if item.startswith("db="):
            return int(item[3:])
    return 0


def _cpu_s(pids: list[int]) -> float | None:
    """User + system CPU seconds of these processes and their children (None without Linux's /proc)."""
    seconds = [_process_tree_cpu(pid) for pid in pids]
    return None if None in seconds else sum(second or 0.0 for second in seconds)


def _delta(before: float | None, after: float | None) -> float | None:
    return None if before is None or after is None else after - before


def plain_app(url: str, model_url: str, client: str = "shared") -> tuple[Celery, Any, Any]:
    """The plain Celery app (Celery's defaults) with its call and collect tasks."""
    app = Celery("bench-plain-llm", broker=url, backend=url)
    call, collect = register_plain_llm_tasks(app, model_url, per_thread=client == "per-thread")
    return app, call, collect


def plain_worker() -> None:
    """Entry of a plain worker process: ``celery worker`` with the arguments after ``-c CODE``."""
    env = os.environ
    app, _, _ = plain_app(env[PLAIN_URL_ENV], env[PLAIN_MODEL_ENV], env.get(PLAIN_CLIENT_ENV, "shared"))
    app.worker_main(["worker", *sys.argv[1:]])


class Bench:
    """The fake model server, both systems' workers and producers, on one Redis."""

    def __init__(self, url: str, args: argparse.Namespace, processes: Processes, log_dir: Path) -> None:
        self.args = args
        self.processes = processes
        self.log_dir = log_dir
        self.ff_url = url
        self.plain_url = _with_db(url, args.celery_db if args.celery_db is not None else _db_of(url) + 1)
        if self.plain_url == self.ff_url:
            raise RuntimeError("--celery-db must differ from the database of the Redis URL")
        self.settings = Settings(key_prefix=f"fanflow-bench-io-{secrets.token_hex(4)}").with_redis(url)
        self.server: subprocess.Popen[bytes] | None = None
        self.model_url = ""
        self.workers: dict[str, list[int]] = {"fanflow": [], "celery": []}
        self.redis = {
            "fanflow": redis.Redis.from_url(self.ff_url, socket_timeout=30),
            "celery": redis.Redis.from_url(self.plain_url, socket_timeout=30),
        }
        self.client: Client | None = None
        self.plain: Celery | None = None
        self.plain_call: Any = None
        self.plain_collect: Any = None

    # --- processes ------------------------------------------------------------------------------

    def start_server(self) -> None:
        """The fake model server, in its own process."""
        argv = [sys.executable, "-c", _SERVER_CODE, str(self.args.port), str(self.args.latency)]
        self.server = self.processes.spawn("fake model server", argv, dict(os.environ))
        assert self.server.stdout is not None
        line = self.server.stdout.readline()
        if not line:
            raise RuntimeError("the fake model server did not start")
        self.model_url = json.loads(line)["url"] + "/v1"

    def server_stats(self, *, reset: bool = False) -> dict[str, int]:
        """Requests answered, in flight now, and the most in flight at once since the last reset."""
        assert self.server is not None and self.server.stdin is not None and self.server.stdout is not None
        self.server.stdin.write(b"reset\n" if reset else b"stats\n")
        self.server.stdin.flush()
        stats: dict[str, int] = json.loads(self.server.stdout.readline())
        return stats

    def _worker_env(self) -> dict[str, str]:
        env = {name: value for name, value in os.environ.items() if not name.startswith("FANFLOW_")}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
        return env

    def start_workers(self) -> None:
        """``--workers`` worker processes per system; returns once every one answers a ping."""
        ff_env = self._worker_env() | {
            "FANFLOW_BROKER_URL": self.ff_url,
            "FANFLOW_KEY_PREFIX": self.settings.key_prefix,
            "OPENAI_BASE_URL": self.model_url,
            "OPENAI_API_KEY": "fake",
        }
        if self.args.events != "default":  # fanflow sends task events (Flower) unless told not to
            ff_env["FANFLOW_TASK_EVENTS"] = "true" if self.args.events == "on" else "false"
        plain_events = ["-E"] if self.args.events == "on" else []  # Celery's default: no events
        plain_env = self._worker_env() | {
            PLAIN_URL_ENV: self.plain_url,
            PLAIN_MODEL_ENV: self.model_url,
            PLAIN_CLIENT_ENV: self.args.plain_client,
        }
        tag = secrets.token_hex(3)
        names: dict[str, list[str]] = {"fanflow": [], "celery": []}
        for index in range(self.args.workers):
            for system in SYSTEMS:
                name = f"io-{system}-{index}-{tag}@%h"
                common = ["-n", name, "--loglevel", self.args.loglevel]
                if system == "fanflow":
                    argv = [sys.executable, "-m", "fanflow.cli", "worker", "-Q", ",".join(FANFLOW_QUEUES)]
                else:
                    code = "from bench.io_fanout import plain_worker; plain_worker()"
                    argv = [sys.executable, "-c", code, "-P", "threads", "-c", str(PLAIN_CONCURRENCY),
                            *plain_events]  # fmt: skip
                process = self.processes.spawn(
                    f"{system} worker {index}",
                    [*argv, *common],
                    ff_env if system == "fanflow" else plain_env,
                    self.log_dir / f"{system}-{index}.log",
                )
                self.workers[system].append(process.pid)
                names[system].append(name.replace("%h", os.uname().nodename))
        self.client = Client(create_app(self.settings))
        self.plain, self.plain_call, self.plain_collect = plain_app(self.plain_url, self.model_url)
        apps = {"fanflow": self.client.app, "celery": self.plain}
        deadline = time.monotonic() + 90
        for system in SYSTEMS:
            waiting = set(names[system])
            while waiting:
                self.processes.check_alive()
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{system} workers did not answer a ping: {sorted(waiting)}")
                for reply in apps[system].control.ping(destination=sorted(waiting), timeout=0.5) or []:
                    waiting -= set(reply)

    def wait_idle(self, system: System, timeout: float = 120.0) -> None:
        """Return once ``system``'s queues are empty and none of its messages is unacknowledged."""
        queues = FANFLOW_QUEUES if system == "fanflow" else [PLAIN_QUEUE]
        client = self.redis[system]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pipe = client.pipeline(transaction=False)
            for queue in queues:
                pipe.llen(queue)
            pipe.hlen("unacked")  # kombu's Redis transport: delivered, not yet acknowledged
            if not any(pipe.execute()):
                return
            time.sleep(0.05)
        raise RuntimeError(f"{system}: the queues did not drain within {timeout:.0f}s")

    def redis_cpu(self) -> float | None:
        """CPU seconds used so far by redis-server (None if INFO is not allowed)."""
        try:
            info: dict[str, Any] = self.redis["fanflow"].info("cpu")
        except redis.RedisError:
            return None
        return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])

    # --- the two systems ------------------------------------------------------------------------

    def fanflow_once(self, size: int) -> float:
        """Submit the fan-out and wait for its result; seconds from submit to result."""
        assert self.client is not None
        spec = FanOut(
            name=f"io-{size}",
            subtasks=[
                Subtask(
                    key=f"b{index}",
                    run=LLMCall(model="openai:gpt-4o-mini", prompt=f"question {index}", max_tokens=16),
                )
                for index in range(size)
            ],
        )
        start = time.perf_counter()
        handle = self.client.submit(spec)
        try:
            result = handle.wait(timeout=self.args.timeout)
        except Exception as exc:  # noqa: BLE001 - say how far it got, then fail the run
            detail = f"fanflow job {handle.job_id}: {exc}"
            with contextlib.suppress(Exception):
                detail += f"; branches: {dict(collections.Counter(handle.branches().values()))}"
            raise RuntimeError(detail) from None
        wall = time.perf_counter() - start
        merged = result.merged
        if (
            result.status is not JobStatus.SUCCEEDED
            or len(result.outcomes) != size
            or not isinstance(merged, list)
            or len(merged) != size
        ):
            failed = [o.error for o in result.outcomes if not o.succeeded][:3]
            raise RuntimeError(
                f"fanflow job {handle.job_id}: {result.status.value}, {len(result.outcomes)} outcomes; "
                f"first errors: {failed}"
            )
        return wall

    def celery_once(self, size: int) -> float:
        """``chord(group(call.s(i) ...), collect.s()).apply_async()``, then ``get``; seconds between."""
        canvas = chord(group([self.plain_call.s(index) for index in range(size)]), self.plain_collect.s())
        start = time.perf_counter()
        res = canvas.apply_async()
        try:
            value = res.get(follow_parents=False, timeout=self.args.timeout)
        except Exception as exc:  # noqa: BLE001 - say how far it got, then fail the run
            done = sum(part.ready() for part in getattr(res.parent, "results", None) or [])
            raise RuntimeError(f"celery chord {res.id}: {exc!r}; {done} of {size} calls done") from None
        wall = time.perf_counter() - start
        if not isinstance(value, list) or len(value) != size or not all(value):
            count = len(value) if isinstance(value, list) else value
            raise RuntimeError(f"celery chord {res.id}: {count} results, expected {size}")
        return wall

    def once(self, system: System, size: int) -> float:
        """One fan-out of ``system``; seconds from submit to result."""
        return self.fanflow_once(size) if system == "fanflow" else self.celery_once(size)

    def run(self, system: System, size: int) -> Run:
        """One measured run of ``system``, started and ended with its workers idle."""
        self.wait_idle(system)
        assert self.server is not None
        server = [self.server.pid]
        self.server_stats(reset=True)
        workers, redis_before, server_before = _cpu_s(self.workers[system]), self.redis_cpu(), _cpu_s(server)
        producer = time.process_time()
        try:
            wall = self.once(system, size)
        except RuntimeError as exc:
            stats = self.server_stats()
            raise RuntimeError(
                f"{exc}\n  model server: {stats['count']} calls received, {stats['in_flight']} in flight"
            ) from None
        producer = time.process_time() - producer
        self.wait_idle(system)  # the workers' acks and events after the result belong to this run
        redis_after = self.redis_cpu()
        return Run(
            system=system,
            size=size,
            wall_s=wall,
            worker_cpu_s=_delta(workers, _cpu_s(self.workers[system])),
            redis_cpu_s=_delta(redis_before, redis_after),
            server_cpu_s=_delta(server_before, _cpu_s(server)),
            producer_cpu_s=producer,
            max_in_flight=self.server_stats()["max_in_flight"],
        )

    # --- profiling ------------------------------------------------------------------------------

    def profile(self, system: System, size: int, directory: Path, spy: str) -> None:
        """One more, untimed run with py-spy on every worker of ``system``; prints where their CPU went."""
        directory.mkdir(parents=True, exist_ok=True)
        self.wait_idle(system)
        outputs = [directory / f"worker-{system}-{index}.txt" for index in range(len(self.workers[system]))]
        # --gil: only the thread holding the GIL, so that the samples are CPU spent in Python.
        spies = [
            subprocess.Popen(
                [
                    *(spy, "record", "--pid", str(worker), "--gil", "--nonblocking"),
                    *("--rate", str(SPY_RATE), "--format", "raw", "--output", str(output)),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for worker, output in zip(self.workers[system], outputs, strict=True)
        ]
        time.sleep(1.0)  # py-spy attaches
        try:
            self.once(system, size)
            self.wait_idle(system)
        finally:
            for process in spies:
                process.send_signal(signal.SIGINT)
            for process in spies:
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        summarize_stacks(system, size, [output for output in outputs if output.exists()])


def summarize_stacks(system: str, size: int, files: list[Path], top: int = 25) -> None:
    """Print the functions holding the GIL the longest, in ms per branch (inclusive and self)."""
    inclusive: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    total = 0
    for path in files:
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            stack, _, count_text = line.rpartition(" ")
            if not stack or not count_text.isdigit():
                continue
            count = int(count_text)
            frames = [frame for frame in stack.split(";") if not frame.startswith(("process ", "thread "))]
            total += count
            for frame in set(frames):
                inclusive[frame] += count
            if frames:
                own[frames[-1]] += count
    to_ms = 1000 / SPY_RATE / size
    print(f"\n{system} workers under py-spy ({', '.join(path.name for path in files)}): GIL held "
          f"{total * to_ms:.2f} ms per branch")  # fmt: skip
    for title, counter in (("inclusive", inclusive), ("self", own)):
        print(f"  top {top} by {title} ms per branch:")
        for frame, count in counter.most_common(top):
            print(f"    {count * to_ms:7.3f}  {frame}")


# --- reporting ------------------------------------------------------------------------------------


def _median(values: list[float | None]) -> float | None:
    known = [value for value in values if value is not None]
    return statistics.median(known) if known and len(known) == len(values) else None


def _ms(seconds: float | None, branches: int, width: int = 6) -> str:
    """Milliseconds per branch, right-aligned (``n/a`` when not measured)."""
    return f"{seconds * 1000 / branches:>{width}.3f}" if seconds is not None else f"{'n/a':>{width}}"


def report(runs: list[Run], args: argparse.Namespace, header: str) -> None:
    """The table: wall (best, median), efficiency, CPU ms per branch, calls in flight; then the ratios."""
    print(f"\n{header}")
    columns = (
        f"{'system':<8} | {'best s':>7} {'median s':>8} | {'eff best':>8} {'eff med':>7} | "
        f"{'worker CPU ms/br':>16} {'redis':>6} {'server':>6} {'producer':>8} | {'max in flight':>13}"
    )
    print(f"{columns}\n{'-' * len(columns)}")
    chosen: dict[str, tuple[float, float, float | None]] = {}
    for system in SYSTEMS:
        mine = [run for run in runs if run.system == system]
        walls = [run.wall_s for run in mine]
        best, median = min(walls), statistics.median(walls)
        worker, redis_s, server, producer = (
            _median([getattr(run, name) for run in mine])
            for name in ("worker_cpu_s", "redis_cpu_s", "server_cpu_s", "producer_cpu_s")
        )
        in_flight = max(run.max_in_flight for run in mine)
        chosen[system] = (best, median, worker)
        print(
            f"{system:<8} | {best:>7.3f} {median:>8.3f} | {args.latency / best:>8.2f} "
            f"{args.latency / median:>7.2f} | {_ms(worker, args.branches, 16)} {_ms(redis_s, args.branches)} "
            f"{_ms(server, args.branches)} {_ms(producer, args.branches, 8)} | {in_flight:>13}"
        )
    ff, cel = chosen["fanflow"], chosen["celery"]
    cpu_ratio = f"{ff[2] / cel[2]:>16.2f}" if ff[2] is not None and cel[2] else f"{'n/a':>16}"
    print(
        f"{'ratio':<8} | {ff[0] / cel[0]:>7.2f} {ff[1] / cel[1]:>8.2f} | {'':>8} {'':>7} | "
        f"{cpu_ratio}   (fanflow / celery)"
    )
    print(
        f"s: submit() / apply_async() to the result in hand; eff: ideal ({args.latency:g} s, one latency) / "
        f"wall;\nCPU ms per branch (medians): all worker processes of the system, redis-server, the fake "
        f"model server, the producer;\nmax in flight: model calls the server held at once, at most"
    )


# --- main -----------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.io_fanout",
        description=(
            "N model calls of a fixed latency against one fake model server: fanflow (two `fanflow worker "
            "-Q fanflow.llm,fanflow.control` processes, defaults) against a plain Celery chord (two "
            "`celery worker -P threads -c 500` processes). Prints wall seconds, efficiency (latency / "
            "wall) and CPU ms per branch."
        ),
    )
    add = parser.add_argument
    add("--branches", type=int, default=1000, help="model calls per fan-out (default: %(default)s)")
    add("--latency", type=float, default=1.0, help="seconds the server takes per call (default: %(default)s)")
    add("--repeat", type=int, default=2, help="measured runs per system (default: %(default)s)")
    add("--workers", type=int, default=2, help="worker processes per system (default: %(default)s)")
    add("--warmup-size", type=int, default=100, help="branches of each system's untimed warm-up run")
    add(
        "--redis-url",
        default=os.environ.get("FANFLOW_BENCH_REDIS_URL"),
        help="Redis to use (default: $FANFLOW_BENCH_REDIS_URL, else an embedded redis-server); fanflow "
        "uses its database, plain Celery the next one",
    )
    add("--celery-db", type=int, help="database number of the plain Celery app (default: fanflow's + 1)")
    add("--port", type=int, default=0, help="port of the fake model server (default: a free one)")
    add(
        "--plain-client",
        choices=["shared", "per-thread"],
        default="per-thread",
        help="the plain Celery task's httpx client: one per thread, as fanflow has it, or one per worker "
        "process shared by its threads (httpcore's pool then costs milliseconds per call and can leave "
        "a call hanging) (default: %(default)s)",
    )
    add(
        "--events",
        choices=["default", "on", "off"],
        default="default",
        help="task events (what Flower shows): each system's default (fanflow on, Celery off), or both "
        "on (Celery with -E), or both off (default: %(default)s)",
    )
    add("--loglevel", default="WARNING", help="log level of every worker (default: %(default)s)")
    add("--timeout", type=float, default=120.0, help="seconds one run may take (default: %(default)s)")
    add("--json", type=Path, metavar="FILE", help="also write every run as JSON to FILE")
    add(
        "--profile",
        type=Path,
        metavar="DIR",
        help="then one more run of each system with py-spy (must be on PATH) recording its workers into "
        "DIR, and print where their CPU went",
    )
    add("--smoke", action="store_true", help="100 branches, 0.2 s latency, one repeat (CI: seconds)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.branches, args.latency, args.repeat, args.warmup_size = 100, 0.2, 1, 20
    if min(args.branches, args.repeat, args.workers, args.warmup_size) < 1 or args.latency <= 0:
        parser.error("--branches, --repeat, --workers, --warmup-size and --latency must be positive")
    if args.profile and shutil.which("py-spy") is None:
        parser.error("--profile needs py-spy on PATH (pip install py-spy)")
    return args


def measure(bench: Bench, args: argparse.Namespace) -> list[Run]:
    """Warm up each system, then ``repeat`` runs of each, alternating which goes first."""
    for system in SYSTEMS:
        bench.run(system, args.warmup_size)
    runs: list[Run] = []
    for repeat in range(args.repeat):
        for system in SYSTEMS if repeat % 2 == 0 else SYSTEMS[::-1]:
            run = bench.run(system, args.branches)
            runs.append(run)
            print(
                f"  {system:<7} {run.wall_s:7.3f} s  efficiency {args.latency / run.wall_s:5.2f}  "
                f"worker CPU {_ms(run.worker_cpu_s, run.size)} ms/branch  max in flight {run.max_in_flight}",
                flush=True,
            )
    return runs


@contextlib.contextmanager
def _interrupt_on_sigterm() -> Iterator[None]:
    """Turn SIGTERM into KeyboardInterrupt, so that every started process is stopped on the way out."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_bench(name: str, redis_given: str | None, body: Callable[[str, str, Processes, Path], int]) -> int:
    """Run ``body(redis url, where, processes, log dir)`` with every process it starts stopped on
    the way out (SIGTERM and Ctrl-C too); an error is one line. Its worker logs are kept (and their
    directory printed) unless it returns 0."""
    processes = Processes()
    log_dir = Path(tempfile.mkdtemp(prefix=f"fanflow-bench-{name}-"))
    code = 1
    try:
        with _interrupt_on_sigterm(), redis_url(redis_given) as (url, where):
            try:
                code = body(url, where, processes, log_dir)
            except Exception as exc:  # noqa: BLE001 - reported; the exit status says it failed
                print(f"{name}: {type(exc).__name__}: {exc}", file=sys.stderr)
            finally:
                processes.stop_all()
    except KeyboardInterrupt:
        print(f"{name}: interrupted; every process it started is stopped", file=sys.stderr)
        code = 130
    if code == 0:
        shutil.rmtree(log_dir, ignore_errors=True)
    else:
        print(f"{name}: worker logs kept in {log_dir}", file=sys.stderr)
    return code


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; 0 when every run completed with N results."""
    args = parse_args(argv)

    def body(url: str, where: str, processes: Processes, log_dir: Path) -> int:
        bench = Bench(url, args, processes, log_dir)
        bench.start_server()
        bench.start_workers()
        header = (
            f"{args.branches} branches x {args.latency:g} s model latency, one fake model server; "
            f"{args.workers} worker processes per system (fanflow: its defaults; celery: -P threads "
            f"-c {PLAIN_CONCURRENCY}, {args.plain_client} httpx client); redis: {where}; "
            f"{os.cpu_count()} CPUs; {args.repeat} run(s) each"
        )
        print(header, flush=True)
        runs = measure(bench, args)
        report(runs, args, header)
        if args.json:
            document = {
                "settings": {k: v for k, v in vars(args).items() if k not in ("json", "profile")},
                "runs": [asdict(run) for run in runs],
            }
            args.json.write_text(json.dumps(document, indent=2, default=str), encoding="utf-8")
        if args.profile:
            spy = shutil.which("py-spy")
            assert spy is not None
            for system in SYSTEMS:
                bench.profile(system, args.branches, args.profile, spy)
        return 0

    return run_bench("io_fanout", args.redis_url, body)


if __name__ == "__main__":
    sys.exit(main())
