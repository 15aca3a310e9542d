"""A pipeline's nodes as a tree, for ``fanflow status`` and ``fanflow watch``, and its shown outputs.

::

    pipeline analysts
    └── input_guard  guard  succeeded  0.4s
        └── dispatcher  succeeded  1.2s
            ├── economic_analyst  succeeded  2.0s
            │   └── synthesizer  running  3.1s  ← also waits for environmental_analyst, social_analyst
            ├── environmental_analyst  failed  0.8s  ValueError: no data
            └── social_analyst  succeeded  1.9s

- each node hangs under the first of its dependencies (``Graph.dependencies(node)[0]``), the
  nodes without any at the top, siblings in topological order; a node waiting for several nodes
  shows once and names the others (``← also waits for ...``);
- every non-guard node waits for every guard: that precedence places a node without inputs under
  the first guard, but is not repeated on each line (the root label says so once);
- a node's state is its live state (``states``), else its outcome's status, else ``pending``; a
  finished node shows how long it ran, a running node how long it has been running (when its
  outcome carries ``started_at``), a failed, skipped or blocked node its error.

State names are plain strings, so states this module does not know are shown unstyled.
"""

from __future__ import annotations

import io
import time
from collections import Counter
from collections.abc import Mapping

from rich.console import Console, RenderableType
from rich.text import Text
from rich.tree import Tree

from fanflow.pipeline.graph import Graph
from fanflow.pipeline.spec import Pipeline
from fanflow.result import JobResult, SubtaskOutcome
from fanflow.synthesis import output_text

__all__ = ["MAX_TREE_NODES", "STATE_STYLES", "node_tree", "pipeline_view", "shown_outputs", "tree_text"]

#: The colour of each node state.
STATE_STYLES: dict[str, str] = {
    "pending": "dim", "queued": "cyan", "running": "blue", "succeeded": "green", "failed": "red",
    "cancelled": "yellow", "skipped": "dim", "blocked": "magenta",
}  # fmt: skip
#: Pipelines with more nodes than this get counts per state in the live view instead of a tree.
MAX_TREE_NODES = 40
#: Error messages are cut to this many characters.
MAX_ERROR_CHARS = 80

_FINISHED = frozenset({"succeeded", "failed", "cancelled", "skipped", "blocked"})
_WITH_ERROR = frozenset({"failed", "skipped", "blocked"})


def _duration(seconds: float) -> str:
    """``0.42s``, ``12.3s``, ``2m05s``, ``1h02m``."""
    seconds = max(seconds, 0.0)
    if seconds < 10:
        return f"{seconds:.2f}s"
    if seconds < 60:
        return f"{seconds:.1f}s"
    if seconds < 3600:
        return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"
    return f"{int(seconds // 3600)}h{int(seconds % 3600 // 60):02d}m"


def _shorten(message: str, limit: int = MAX_ERROR_CHARS) -> str:
    line = " ".join(message.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _state(node_id: str, states: Mapping[str, str], outcome: SubtaskOutcome | None) -> str:
    if node_id in states:
        return str(states[node_id])
    return str(outcome.status.value) if outcome is not None else "pending"


def _timing(state: str, outcome: SubtaskOutcome | None, now: float, started: float | None = None) -> str:
    if state == "running" and started is not None:  # this delivery's start (the job store's)
        return _duration(now - started)
    if outcome is None or outcome.started_at is None:
        return ""
    if state in _FINISHED and outcome.finished_at is not None:
        return _duration(outcome.finished_at - outcome.started_at)
    if state == "running" and outcome.finished_at is None:
        return _duration(now - outcome.started_at)
    return ""


def _error(state: str, outcome: SubtaskOutcome | None) -> str:
    if state not in _WITH_ERROR or outcome is None or outcome.error is None:
        return ""
    error = outcome.error
    # skipped / blocked messages say it all ("skipped: upstream node 'x' failed"); a failure's type helps
    return _shorten(f"{error.type}: {error.message}" if state == "failed" else error.message)


def _label(
    graph: Graph,
    node_id: str,
    parent: str | None,
    state: str,
    outcome: SubtaskOutcome | None,
    now: float,
    started: float | None = None,
) -> Text:
    node = graph.pipeline.node(node_id)
    style = STATE_STYLES.get(state, "")
    label = Text(node_id, style="bold")
    if node.guard:
        label.append("  guard", style="bold magenta")
    if node.fanout is not None:
        label.append("  fan-out", style="dim")
    label.append(f"  {state}", style=style)
    timing = _timing(state, outcome, now, started)
    if timing:
        label.append(f"  {timing}")
    # a node's inputs are its predecessors; one without any waits only for the guards
    awaited = graph.predecessors(node_id) or graph.dependencies(node_id)
    others = [other for other in awaited if other != parent]
    if others:
        label.append(f"  ← also waits for {', '.join(others)}", style="dim")
    error = _error(state, outcome)
    if error:
        label.append(f"  {error}", style=style)
    return label


def node_tree(
    pipeline: Pipeline,
    states: Mapping[str, str],
    outcomes: Mapping[str, SubtaskOutcome] | None = None,
    *,
    now: float | None = None,
    started: Mapping[str, float] | None = None,
) -> Tree:
    """The pipeline's nodes as a tree: each under its first dependency, in topological order.

    Args:
        pipeline: the pipeline the job runs.
        states: each node's live state (``handle.branches()``); a node missing from it takes its
            outcome's status, or ``pending``.
        outcomes: the outcomes so far, by node id: their durations and errors are shown.
        now: the time (``time.time()`` seconds) running nodes' elapsed time is measured to.
        started: when each running node's delivery began (``store.started_at``).
    """
    graph = Graph(pipeline)
    outcomes = outcomes or {}
    now = time.time() if now is None else now
    title = Text(f"pipeline {pipeline.name}", style="bold")
    if graph.guards:
        title.append(f"  (every node waits for {', '.join(graph.guards)})", style="dim")
    root = Tree(title)
    branches: dict[str, Tree] = {}
    for node_id in graph.topological_order():
        dependencies = graph.dependencies(node_id)
        parent = dependencies[0] if dependencies else None
        outcome = outcomes.get(node_id)
        state = _state(node_id, states, outcome)
        label = _label(graph, node_id, parent, state, outcome, now, (started or {}).get(node_id))
        fanout = pipeline.node(node_id).fanout
        if fanout is not None:  # its branches run as nodes ``<id>.<key>``: how many are done
            done = sum(states.get(f"{node_id}.{s.key}", "pending") in _FINISHED for s in fanout.subtasks)
            label.append(f"  ({done}/{len(fanout.subtasks)} branches done)", style="dim")
        branches[node_id] = (root if parent is None else branches[parent]).add(label)
    return root


def tree_text(
    pipeline: Pipeline,
    states: Mapping[str, str],
    outcomes: Mapping[str, SubtaskOutcome] | None = None,
    *,
    now: float | None = None,
    started: Mapping[str, float] | None = None,
    width: int = 120,
) -> str:
    """``node_tree`` as plain text (no colour), wrapped at ``width`` columns, ending with a newline."""
    buffer = io.StringIO()
    console = Console(file=buffer, width=width, color_system=None, force_terminal=False, highlight=False)
    console.print(node_tree(pipeline, states, outcomes, now=now, started=started))
    return "".join(line.rstrip() + "\n" for line in buffer.getvalue().splitlines())


def pipeline_view(
    pipeline: Pipeline,
    states: Mapping[str, str],
    outcomes: Mapping[str, SubtaskOutcome] | None = None,
    *,
    now: float | None = None,
    started: Mapping[str, float] | None = None,
    max_nodes: int = MAX_TREE_NODES,
) -> RenderableType:
    """The live view of a pipeline job's nodes: ``node_tree``, or counts per state past ``max_nodes``."""
    if len(pipeline.nodes) <= max_nodes:
        return node_tree(pipeline, states, outcomes, now=now, started=started)
    outcomes = outcomes or {}
    counts = Counter(_state(node.id, states, outcomes.get(node.id)) for node in pipeline.nodes)
    ordered = [s for s in STATE_STYLES if counts[s]] + sorted(s for s in counts if s not in STATE_STYLES)
    line = Text("nodes: ")
    for index, state in enumerate(ordered):
        line.append(", " if index else "")
        line.append(f"{counts[state]:,} {state}", style=STATE_STYLES.get(state, ""))
    return line


def shown_outputs(pipeline: Pipeline, result: JobResult) -> str:
    """The outputs shown to the user, as the seed tutorial's runner prints them.

    For every succeeded node with ``show: true`` (if no node has it: every succeeded sink node),
    in declaration order, ``"\\n[<node id>]\\n<output>"``; an output that is not a string is
    printed as JSON indented by 2. Empty when none of those nodes succeeded.
    """
    shown = [node.id for node in pipeline.nodes if node.show] or list(Graph(pipeline).sinks())
    outcomes = {outcome.key: outcome for outcome in result.outcomes}
    parts = []
    for node_id in shown:
        outcome = outcomes.get(node_id)
        if outcome is not None and outcome.succeeded:
            parts.append(f"\n[{node_id}]\n{output_text(outcome.output)}")
    return "".join(parts)
