"""The live view of a job for ``fanflow run`` and ``fanflow watch``.

A progress bar of the current round, then what the job has spent — tokens (input / output /
cached), dollars, model calls — and its **burn rate** (tokens per second over the last
``BURN_WINDOW_S`` seconds), then each branch's state (for jobs small enough to list; bigger ones
get counts per state; a pipeline's nodes as a tree, see ``fanflow.pipeline.view``). It redraws a
few times per second on stderr and returns the result.
"""

from __future__ import annotations

import time
from collections import Counter, deque

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from fanflow.client import JobHandle
from fanflow.errors import JobTimeoutError
from fanflow.pipeline.spec import Pipeline
from fanflow.pipeline.view import MAX_TREE_NODES, pipeline_view
from fanflow.result import JobResult, SubtaskOutcome, Usage

__all__ = ["BURN_WINDOW_S", "BurnRate", "follow", "usage_line"]

#: The burn rate is measured over this many seconds.
BURN_WINDOW_S = 10.0
#: Jobs with at most this many branches get a row per branch.
MAX_ROWS = 40
#: Branch states are read every this many seconds (they cost more than the counters).
BRANCHES_EVERY_S = 1.0

_STATE_STYLE = {
    "queued": "dim", "running": "cyan", "succeeded": "green", "failed": "red", "cancelled": "yellow",
    "skipped": "yellow",
}  # fmt: skip


class BurnRate:
    """Tokens (and dollars) per second over a sliding window of samples."""

    def __init__(self, window_s: float = BURN_WINDOW_S) -> None:
        self.window_s = window_s
        self._samples: deque[tuple[float, int, float]] = deque()

    def add(self, at: float, tokens: int, cost_usd: float) -> None:
        """Record the job's totals at time ``at``."""
        self._samples.append((at, tokens, cost_usd))
        while len(self._samples) > 2 and at - self._samples[1][0] >= self.window_s:
            self._samples.popleft()

    def rate(self) -> tuple[float, float]:
        """(tokens/s, dollars/s) over the window; zeros until there are two samples."""
        if len(self._samples) < 2:
            return 0.0, 0.0
        (t0, tok0, cost0), (t1, tok1, cost1) = self._samples[0], self._samples[-1]
        span = t1 - t0
        if span <= 0:
            return 0.0, 0.0
        return (tok1 - tok0) / span, (cost1 - cost0) / span


def usage_line(usage: Usage, burn: tuple[float, float] | None = None) -> str:
    """``tokens 12,345 (in 10,000 incl. 2,000 cached / out 2,345) · $0.0123 · 5 calls · burn 2,469 tok/s``."""
    line = (
        f"tokens {usage.total_tokens:,} (in {usage.input_tokens:,}"
        + (f" incl. {usage.cached_tokens:,} cached" if usage.cached_tokens else "")
        + f" / out {usage.output_tokens:,}) · ${usage.cost_usd:.4f} · {usage.calls:,} calls"
    )
    if burn is not None:
        line += f" · burn {burn[0]:,.0f} tok/s (${burn[1] * 60:.4f}/min)"
    return line


def _branches_view(states: dict[str, str]) -> RenderableType:
    if len(states) > MAX_ROWS:
        counts = Counter(states.values())
        parts = [f"[{_STATE_STYLE.get(s, '')}]{counts[s]:,} {s}[/]" for s in _STATE_STYLE if counts[s]]
        return Text.from_markup("branches: " + ", ".join(parts))
    table = Table(show_header=True, header_style="bold", box=None, pad_edge=False)
    table.add_column("branch")
    table.add_column("state")
    for key, state in states.items():
        table.add_row(key, f"[{_STATE_STYLE.get(state, '')}]{state}[/]")
    return table


def _node_times(handle: JobHandle) -> tuple[dict[str, SubtaskOutcome], dict[str, float]]:
    """The outcomes so far and when each running node began (for a pipeline's tree)."""
    store = handle.client.store
    return store.outcomes(handle.job_id), store.started_at(handle.job_id)


def follow(
    handle: JobHandle,
    console: Console,
    *,
    timeout: float | None = None,
    interval_s: float = 0.25,
    pipeline: Pipeline | None = None,
) -> JobResult:
    """Draw the job's live view until it has a result; return the result.

    With ``pipeline`` (the job runs it), the branches are drawn as its tree of nodes, with the
    durations and errors of the nodes done so far.

    Raises:
        JobTimeoutError: ``timeout`` passed first.
        BackendError: Redis stayed unreachable for the client's outage grace.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    bar = Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[failed]}"), TimeElapsedColumn(), console=console,
    )  # fmt: skip
    meta = handle.progress()
    task = bar.add_task(meta.name, total=meta.size, failed="")
    burn = BurnRate()
    states: dict[str, str] = {}
    outcomes: dict[str, SubtaskOutcome] = {}
    started: dict[str, float] = {}
    states_at = -float("inf")
    # the tree shows durations and errors; past MAX_TREE_NODES the view is counts, which need none
    with_outcomes = pipeline is not None and len(pipeline.nodes) <= MAX_TREE_NODES
    with Live(console=console, refresh_per_second=8, transient=False) as live:
        while True:
            meta = handle.progress()
            failed = f"[red]{meta.failed} failed[/]" if meta.failed else ""
            bar.update(task, total=meta.size, completed=meta.done, failed=failed)
            usage = sum(handle.usage().values(), Usage())
            now = time.monotonic()
            burn.add(now, usage.total_tokens, usage.cost_usd)
            if now - states_at >= BRANCHES_EVERY_S:
                states, states_at = handle.branches(), now
                if with_outcomes:
                    outcomes, started = handle.client.outage.call(
                        lambda: _node_times(handle), f"job {handle.job_id}: reading outcomes"
                    )
            result = handle.result()
            if result is not None:
                states = {o.key: o.status.value for o in result.outcomes}
                outcomes = {o.key: o for o in result.outcomes}
            view = (
                _branches_view(states) if pipeline is None
                else pipeline_view(pipeline, states, outcomes, now=time.time(), started=started)
            )  # fmt: skip
            live.update(Group(bar, Text(usage_line(usage, burn.rate())), view))
            if result is not None:
                return result
            if deadline is not None and now > deadline:
                raise JobTimeoutError(f"job {handle.job_id} did not finish within {timeout}s")
            time.sleep(interval_s)
