"""DAG makespan: fanflow's pipeline runtime against a level-by-level scheduler and the critical path.

Each DAG has uneven node durations (seconds, times ``--scale``); every node just sleeps its
duration, so the makespan is the schedule alone plus each system's per-node overhead. In one run,
on one Redis (a database each), with two worker processes per system and 16 threads each (every
node of a DAG can run at once):

* fanflow: two ``fanflow worker -Q fanflow.py,fanflow.control -c 16`` processes; the producer
  submits the DAG as a ``Pipeline`` of ``PyCall(bench.tasks:sleep, kwargs={"seconds": d})`` nodes
  with ``Client.submit`` and waits for the result. A node starts as soon as its own dependencies
  are done. Reported: the *span*, max(finished_at) - min(started_at) over the node outcomes, and
  the *wall* time from ``submit()`` to the result in hand (merge and result read included);
* level by level, the seed tutorial's runner: every node of a topological level
  (``Graph.levels()``) runs in parallel and the next level starts when the whole level is done,
  hand-written with plain Celery -- for each level ``group(sleep.s(d) ...).apply_async().get()``
  on a ``Celery(broker=url, backend=url)`` app with Celery's defaults, served by two
  ``celery worker -P threads -c 16`` processes. Reported: wall from the first level's
  ``apply_async()`` to the last level's results. ``GroupResult.get`` polls every ``interval``
  (Celery's default 0.5 s), which costs each level up to that much beyond its slowest node:
  ``--get-interval 0.01`` measures the barrier alone;
* computed: ``Graph.critical_path(durations)`` (the lower bound of any scheduler with unlimited
  workers) and ``Graph.level_makespan(durations)`` (the level-by-level ideal).

Target: fanflow's span <= critical path x 1.05 + 0.3 s on every DAG. The exit status is non-zero on
errors (a worker that died, a job that did not succeed, a node started before one of its
dependencies finished), not on a missed target unless ``--strict``.

Run from the repository root: ``python -m bench.dag_makespan --help``.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from celery import Celery, group

from bench.io_fanout import PLAIN_URL_ENV, REPO_ROOT, Processes, _db_of, _with_db, run_bench
from bench.tasks import SLEEP_PATH, register_plain_sleep_task
from fanflow.app import CONTROL_QUEUE, QUEUES, create_app
from fanflow.client import Client
from fanflow.config import Settings
from fanflow.pipeline import Edge, Graph, Pipeline, PipelineNode
from fanflow.result import JobStatus
from fanflow.spec import PyCall

#: Threads of every worker process, both systems: more than the widest DAG has nodes.
CONCURRENCY = 16
FANFLOW_QUEUES = [QUEUES["python"], CONTROL_QUEUE]
#: Slack of the dependency-order check (clocks of one host; time.time() resolution).
ORDER_SLACK_S = 0.005


def _e(node: str, **lists: list[str | Edge]) -> Edge:
    """An edge in the seed syntax, its entries given as node ids or nested edges."""
    return Edge(
        node=node, **{form: [_e(x) if isinstance(x, str) else x for x in xs] for form, xs in lists.items()}
    )


@dataclass(frozen=True, slots=True)
class Dag:
    """A benchmark DAG: node durations at scale 1 (declaration order) and seed-syntax edges."""

    name: str
    durations: dict[str, float]
    edges: list[Edge]

    def scaled(self, scale: float) -> dict[str, float]:
        """The node durations times ``scale``."""
        return {node: round(seconds * scale, 4) for node, seconds in self.durations.items()}

    def pipeline(self, scale: float) -> Pipeline:
        """The DAG as a pipeline of sleeping python nodes."""
        nodes = [
            PipelineNode(id=node, run=PyCall(function=SLEEP_PATH, kwargs={"seconds": seconds}))
            for node, seconds in self.scaled(scale).items()
        ]
        return Pipeline(name=f"dag-{self.name}", nodes=nodes, edges=self.edges)


DAGS: tuple[Dag, ...] = (
    Dag("fan-out", {"dispatcher": 1.0, "analyst_a": 2.0, "analyst_b": 0.5, "analyst_c": 1.2},
        [_e("dispatcher", children=["analyst_a", "analyst_b", "analyst_c"])]),
    Dag("fan-in", {"analyst_a": 2.0, "analyst_b": 0.5, "analyst_c": 1.0, "synthesizer": 1.0},
        [_e("synthesizer", fan_in=["analyst_a", "analyst_b", "analyst_c"])]),
    Dag("fan-out+fan-in",
        {"dispatcher": 0.5, "analyst_a": 2.0, "analyst_b": 0.5, "analyst_c": 1.0, "synthesizer": 1.0},
        [_e("dispatcher", children=["analyst_a", "analyst_b", "analyst_c"]),
         _e("synthesizer", fan_in=["analyst_a", "analyst_b", "analyst_c"])]),
    Dag("nested", {"A": 0.5, "B": 0.5, "C": 4.0, "D": 2.0, "E": 1.0, "F": 0.5},
        [_e("A", children=[_e("B", children=["D", "E"]), "C"]), _e("F", fan_in=["C", "D", "E"])]),
    Dag("ordered-children", {"plan": 0.5, "draft": 1.0, "review": 1.0, "publish": 1.0, "side": 3.0},
        [_e("plan", ordered_children=["draft", "review", "publish"], children=["side"])]),
    Dag("ordered-fan-in", {"collect": 1.0, "clean": 0.5, "analyze": 1.0, "extra": 2.0, "report": 0.5},
        [_e("report", ordered_fan_in=["collect", "clean", "analyze"], fan_in=["extra"])]),
    Dag("staggered", {"a1": 6.5, "a2": 0.5, "b1": 0.5, "b2": 6.5},
        [_e("a1", children=["a2"]), _e("b1", children=["b2"])]),
    Dag("non-sp", {"A": 1.0, "B": 3.0, "C": 3.0, "D": 1.0},
        [_e("A", children=["C", "D"]), _e("B", children=["D"])]),
    Dag("irregular",
        {"ingest": 0.5, "lookup": 4.0, "parse": 2.0, "sample": 0.5, "index": 1.0, "model": 2.5,
         "embed": 0.5, "cluster": 3.0, "join": 1.0, "score": 0.5, "publish": 0.5},
        [_e("ingest", children=["parse", _e("sample", children=["model"]),
                                _e("index", ordered_children=["embed", "cluster"])]),
         _e("join", fan_in=["parse", "model"]), _e("score", fan_in=["embed", "model"]),
         _e("cluster", fan_in=["lookup"]), _e("publish", fan_in=["join", "cluster", "score"])]),
)  # fmt: skip
SMOKE_DAGS = ("fan-out+fan-in", "nested", "staggered", "non-sp", "irregular")


@dataclass(slots=True)
class Row:
    """One DAG's numbers (seconds; measured ones the best of the repeats)."""

    dag: str
    nodes: int
    critical_s: float
    level_ideal_s: float
    level_s: float | None = None
    fanflow_span_s: float | None = None
    fanflow_wall_s: float | None = None
    error: str | None = None

    @property
    def limit_s(self) -> float:
        """The target: fanflow's span at most this."""
        return self.critical_s * 1.05 + 0.3

    @property
    def passed(self) -> bool | None:
        """Whether fanflow's span met the target (None: not measured)."""
        return None if self.fanflow_span_s is None else self.fanflow_span_s <= self.limit_s


def _best(old: float | None, new: float) -> float:
    return new if old is None else min(old, new)


class Bench:
    """Both systems' workers and producers on one Redis, fanflow on its database, Celery on the next."""

    def __init__(self, url: str, args: argparse.Namespace, processes: Processes, log_dir: Path) -> None:
        self.args = args
        self.processes = processes
        self.log_dir = log_dir
        self.ff_url = url
        self.plain_url = _with_db(url, _db_of(url) + 1)
        self.settings = Settings(key_prefix=f"fanflow-bench-dag-{secrets.token_hex(4)}").with_redis(url)
        self.client = Client(create_app(self.settings))
        self.plain = Celery("bench-plain-dag", broker=self.plain_url, backend=self.plain_url)
        self.plain_sleep = register_plain_sleep_task(self.plain)

    def start_workers(self) -> None:
        """``--workers`` processes per system; returns once every one answers a ping."""
        base = {name: value for name, value in os.environ.items() if not name.startswith("FANFLOW_")}
        base["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), base.get("PYTHONPATH")]))
        ff_env = base | {"FANFLOW_BROKER_URL": self.ff_url, "FANFLOW_KEY_PREFIX": self.settings.key_prefix}
        plain_env = base | {PLAIN_URL_ENV: self.plain_url}
        tag = secrets.token_hex(3)
        names: dict[str, list[str]] = {"fanflow": [], "celery": []}
        for index in range(self.args.workers):
            for system, env in (("fanflow", ff_env), ("celery", plain_env)):
                name = f"dag-{system}-{index}-{tag}@%h"
                if system == "fanflow":
                    argv = [sys.executable, "-m", "fanflow.cli", "worker", "-Q", ",".join(FANFLOW_QUEUES)]
                else:
                    code = "from bench.dag_makespan import plain_worker; plain_worker()"
                    argv = [sys.executable, "-c", code, "-P", "threads"]
                argv += ["-c", str(CONCURRENCY), "-n", name, "--loglevel", self.args.loglevel]
                self.processes.spawn(
                    f"{system} worker {index}", argv, env, self.log_dir / f"{system}-{index}.log"
                )
                names[system].append(name.replace("%h", os.uname().nodename))
        deadline = time.monotonic() + 90
        for system, app in (("fanflow", self.client.app), ("celery", self.plain)):
            waiting = set(names[system])
            while waiting:
                self.processes.check_alive()
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{system} workers did not answer a ping: {sorted(waiting)}")
                for reply in app.control.ping(destination=sorted(waiting), timeout=0.5) or []:
                    waiting -= set(reply)

    def levels(self, graph: Graph, durations: dict[str, float]) -> float:
        """The level-by-level scheduler; seconds from the first level sent to the last one done."""
        start = time.perf_counter()
        for level in graph.levels():
            results = group(self.plain_sleep.s(durations[node]) for node in level).apply_async()
            spans = results.get(timeout=self.args.timeout, interval=self.args.get_interval)
            if len(spans) != len(level):
                raise RuntimeError(f"level {level}: {len(spans)} results")
        return time.perf_counter() - start

    def fanflow(self, pipeline: Pipeline, graph: Graph, durations: dict[str, float]) -> tuple[float, float]:
        """Submit the pipeline and wait for it: ``(span, wall)`` in seconds; checks the schedule."""
        start = time.perf_counter()
        handle = self.client.submit(pipeline)
        result = handle.wait(timeout=self.args.timeout)
        wall = time.perf_counter() - start
        if result.status is not JobStatus.SUCCEEDED:
            errors = [f"{o.key}: {o.error}" for o in result.outcomes if not o.succeeded][:3]
            raise RuntimeError(f"fanflow job {handle.job_id}: {result.status.value}; {errors}")
        times: dict[str, tuple[float, float]] = {}
        for outcome in result.outcomes:
            if outcome.started_at is None or outcome.finished_at is None:
                raise RuntimeError(f"node {outcome.key}: no started_at/finished_at")
            times[outcome.key] = (outcome.started_at, outcome.finished_at)
        if set(times) != set(graph.nodes):
            raise RuntimeError(f"outcomes for {sorted(times)}, nodes {sorted(graph.nodes)}")
        for node in graph.nodes:
            started, finished = times[node]
            if finished - started < durations[node] - ORDER_SLACK_S:
                raise RuntimeError(f"node {node} ran {finished - started:.3f} s < {durations[node]} s")
            for dep in graph.dependencies(node):
                if started < times[dep][1] - ORDER_SLACK_S:
                    raise RuntimeError(
                        f"node {node} started {times[dep][1] - started:.3f} s before {dep} ended"
                    )
        span = max(f for _, f in times.values()) - min(s for s, _ in times.values())
        return span, wall

    def measure(self, dag: Dag, scale: float) -> Row:
        """``--repeat`` runs of each system (alternating which goes first) on one DAG; the best of each."""
        pipeline = dag.pipeline(scale)
        graph = Graph(pipeline)
        durations = dag.scaled(scale)
        row = Row(dag.name, len(graph.nodes), graph.critical_path(durations), graph.level_makespan(durations))
        for repeat in range(self.args.repeat):
            for system in ("levels", "fanflow") if repeat % 2 == 0 else ("fanflow", "levels"):
                if system == "levels":
                    row.level_s = _best(row.level_s, self.levels(graph, durations))
                elif row.error is None:
                    try:
                        span, wall = self.fanflow(pipeline, graph, durations)
                    except Exception as exc:  # noqa: BLE001 - reported in the table; exit status 1
                        row.error = f"{type(exc).__name__}: {exc}"
                        continue
                    row.fanflow_span_s = _best(row.fanflow_span_s, span)
                    row.fanflow_wall_s = _best(row.fanflow_wall_s, wall)
        return row


def plain_worker() -> None:
    """Entry of a plain Celery worker process: ``celery worker`` with the arguments after ``-c CODE``."""
    app = Celery("bench-plain-dag", broker=os.environ[PLAIN_URL_ENV], backend=os.environ[PLAIN_URL_ENV])
    register_plain_sleep_task(app)
    app.worker_main(["worker", *sys.argv[1:]])


# --- reporting ------------------------------------------------------------------------------------


def _cell(value: float | None, width: int, digits: int = 2) -> str:
    return f"{value:>{width}.{digits}f}" if value is not None else f"{'-':>{width}}"


def report(rows: list[Row], header: str) -> None:
    """Print the table and the errors."""
    print(f"\n{header}")
    columns = (
        f"{'DAG':<17} {'nodes':>5} | {'critical':>8} {'lvl ideal':>9} {'lvl meas':>8} | "
        f"{'ff span':>7} {'ff wall':>7} {'ff/crit':>7} | target (span <= crit x 1.05 + 0.3)"
    )
    print(f"{columns}\n{'-' * len(columns)}")
    for row in rows:
        ratio = (
            row.fanflow_span_s / row.critical_s if row.fanflow_span_s is not None and row.critical_s else None
        )
        verdict = "ERROR" if row.error else "PASS" if row.passed else "FAIL"
        print(
            f"{row.dag:<17} {row.nodes:>5} | {_cell(row.critical_s, 8)} {_cell(row.level_ideal_s, 9)} "
            f"{_cell(row.level_s, 8)} | {_cell(row.fanflow_span_s, 7)} {_cell(row.fanflow_wall_s, 7)} "
            f"{_cell(ratio, 7, 3)} | {verdict} (<= {row.limit_s:.2f})"
        )
    print(
        "seconds; critical: Graph.critical_path (lower bound); lvl ideal: Graph.level_makespan; lvl meas: "
        "plain Celery,\none group per level, first apply_async to last get; ff span: max(finished_at) - "
        "min(started_at) of the\nnode outcomes; ff wall: submit() to the result in hand; "
        "ff/crit: span / critical"
    )
    for row in rows:
        if row.error:
            print(f"{row.dag}: fanflow error: {row.error}", file=sys.stderr)


# --- main -----------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.dag_makespan",
        description=(
            "Makespan of DAGs with uneven node durations (each node sleeps): fanflow pipelines (two `fanflow "
            f"worker -Q fanflow.py,fanflow.control -c {CONCURRENCY}` processes) against a level-by-level "
            f"scheduler written with plain Celery (one group per level; two `celery worker -P threads -c "
            f"{CONCURRENCY}` processes) and the critical path."
        ),
        epilog="Target: fanflow's span <= critical path x 1.05 + 0.3 s. DAGs: "
        + ", ".join(d.name for d in DAGS),
    )
    add = parser.add_argument
    add("--scale", type=float, help="multiply every duration (default: 1.0; --smoke: 0.3)")
    add("--dags", help="comma-separated DAG names (default: all; --smoke: " + ",".join(SMOKE_DAGS) + ")")
    add("--repeat", type=int, default=1, help="runs per DAG and system; the best is reported (default: 1)")
    add("--workers", type=int, default=2, help="worker processes per system (default: %(default)s)")
    add(
        "--redis-url",
        default=os.environ.get("FANFLOW_BENCH_REDIS_URL"),
        help="Redis to use (default: $FANFLOW_BENCH_REDIS_URL, else an embedded redis-server); fanflow "
        "uses its database, plain Celery the next one",
    )
    add(
        "--get-interval",
        type=float,
        default=0.5,
        help="the level-by-level scheduler's GroupResult.get(interval=...): Celery's default 0.5 s adds up "
        "to that per level; 0.01 leaves the barrier alone (default: %(default)s)",
    )
    add("--loglevel", default="WARNING", help="log level of every worker (default: %(default)s)")
    add("--timeout", type=float, default=120.0, help="seconds one run may take (default: %(default)s)")
    add("--strict", action="store_true", help="exit 1 when a DAG misses the target, too")
    add("--json", type=Path, metavar="FILE", help="also write the rows as JSON to FILE")
    add("--smoke", action="store_true", help=f"{len(SMOKE_DAGS)} DAGs at scale 0.3 (CI: about 35 s)")
    args = parser.parse_args(argv)
    if args.scale is None:
        args.scale = 0.3 if args.smoke else 1.0
    names = args.dags.split(",") if args.dags else list(SMOKE_DAGS if args.smoke else (d.name for d in DAGS))
    known = {dag.name: dag for dag in DAGS}
    unknown = [name for name in names if name not in known]
    if unknown:
        parser.error(f"unknown DAG(s) {unknown}; known: {', '.join(known)}")
    args.chosen = [known[name] for name in names]
    if min(args.scale, args.get_interval) <= 0 or min(args.repeat, args.workers) < 1:
        parser.error("--scale, --get-interval, --repeat and --workers must be positive")
    return args


def run(args: argparse.Namespace, url: str, where: str, processes: Processes, log_dir: Path) -> list[Row]:
    """Start the workers, warm both systems up, measure every chosen DAG and print the table."""
    bench = Bench(url, args, processes, log_dir)
    bench.start_workers()
    header = (
        f"DAG makespan at scale {args.scale:g}; {args.workers} worker processes per system, "
        f"{CONCURRENCY} threads each; level-by-level get(interval={args.get_interval:g}); redis: {where}; "
        f"{os.cpu_count()} CPUs; best of {args.repeat}"
    )
    print(header, flush=True)
    warm = bench.measure(DAGS[2], 0.02)  # untimed: both workers of each system import and connect
    if warm.error:
        print(f"  warm-up: fanflow error: {warm.error}", file=sys.stderr)
    rows: list[Row] = []
    for dag in args.chosen:
        row = bench.measure(dag, args.scale)
        rows.append(row)
        print(
            f"  {dag.name:<17} critical {row.critical_s:6.2f} s  levels {_cell(row.level_s, 6)} s  "
            f"fanflow span {_cell(row.fanflow_span_s, 6)} s  wall {_cell(row.fanflow_wall_s, 6)} s",
            flush=True,
        )
    report(rows, header)
    return rows


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; 0 unless something failed (or, with ``--strict``, a target was missed)."""
    args = parse_args(argv)

    def body(url: str, where: str, processes: Processes, log_dir: Path) -> int:
        rows = run(args, url, where, processes, log_dir)
        if args.json:
            settings = {"scale": args.scale, "repeat": args.repeat, "get_interval": args.get_interval}
            document = {"settings": settings, "rows": [asdict(r) | {"limit_s": r.limit_s} for r in rows]}
            args.json.write_text(json.dumps(document, indent=2), encoding="utf-8")
        missed = args.strict and not all(row.passed for row in rows)
        return 1 if missed or any(row.error for row in rows) else 0

    return run_bench("dag_makespan", args.redis_url, body)


if __name__ == "__main__":
    sys.exit(main())
