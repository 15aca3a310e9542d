"""The dependency graph of a validated pipeline: what each node waits for and what it is fed.

Two relations, kept apart:

- **predecessors** -- the link sources of a node, in declared order (see ``fanflow.pipeline.spec``).
  They are the node's inputs: its ``{results}`` are their outputs in this order, and each is also
  ``{<predecessor id>}``. Completion order never changes them.
- **guards** -- every guard node precedes every non-guard node (the tutorial: "A guard node
  automatically precedes all other nodes, including fan-out children. The guard fires first; if it
  fails, no child ever starts"). This orders the schedule but feeds nothing: a guard's output is
  an input only of the nodes an edge links it to. A guard may come after other guards (through
  edges) but never after a non-guard node; guards not linked to one another run in parallel.

A node's **dependencies** are both together: it may start as soon as all of them are done --
never at a level-wide barrier. ``levels`` gives the level-by-level schedule of the tutorial's own
runner (all of a level done before the next starts) only to compare makespans with
``critical_path``.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Mapping, Sequence

from fanflow.pipeline.spec import Link, Pipeline, declared_links

__all__ = ["Graph", "reachable"]


def reachable(edges: Mapping[str, Sequence[str]], start: str, order: Sequence[str]) -> list[str]:
    """The nodes reachable from ``start`` (not itself) along ``edges``, in ``order``."""
    seen: set[str] = set()
    stack = list(edges[start])
    while stack:
        current = stack.pop()
        if current not in seen:
            seen.add(current)
            stack.extend(edges[current])
    return [node for node in order if node in seen]


def _is_identifier(name: str) -> bool:
    return name.isidentifier() and name.isascii()


class Graph:
    """The dependency graph of a validated ``Pipeline``.

    Every query answers in declaration order (of ``pipeline.nodes``) where the relation itself
    has no order, so two processes build the same schedule from the same spec.

    Attributes:
        pipeline: the pipeline it was built from.
        nodes: every node id, in declaration order.
        guards: the guard node ids, in declaration order.
    """

    def __init__(self, pipeline: Pipeline) -> None:
        """Build the graph of ``pipeline`` (already validated: no unknown ids, no cycle)."""
        self.pipeline = pipeline
        self.nodes: tuple[str, ...] = tuple(node.id for node in pipeline.nodes)
        self.guards: tuple[str, ...] = tuple(pipeline.guards)
        self._position = {node_id: index for index, node_id in enumerate(self.nodes)}
        guards = set(self.guards)
        predecessors: dict[str, list[str]] = {node_id: [] for node_id in self.nodes}
        successors: dict[str, list[str]] = {node_id: [] for node_id in self.nodes}
        self._links: dict[tuple[str, str], Link] = {}
        for link in declared_links(pipeline.edges):
            if (link.source, link.target) in self._links:
                continue
            self._links[(link.source, link.target)] = link
            predecessors[link.target].append(link.source)
            successors[link.source].append(link.target)
        self._predecessors = {node_id: tuple(found) for node_id, found in predecessors.items()}
        self._successors = {node_id: tuple(found) for node_id, found in successors.items()}
        self._dependencies: dict[str, tuple[str, ...]] = {}
        self._dependents: dict[str, tuple[str, ...]] = {}
        non_guards = [node_id for node_id in self.nodes if node_id not in guards]
        for node_id in self.nodes:
            inputs = self._predecessors[node_id]
            implied = () if node_id in guards else self.guards
            self._dependencies[node_id] = inputs + tuple(g for g in implied if g not in inputs)
            outputs = self._successors[node_id]
            guarded = non_guards if node_id in guards else ()
            self._dependents[node_id] = outputs + tuple(n for n in guarded if n not in outputs)
        self._order = self._topological_order()

    def __repr__(self) -> str:
        return f"Graph({self.pipeline.name!r}, {len(self.nodes)} nodes, {len(self._links)} links)"

    # --- the relations ----------------------------------------------------------------------------

    def _check(self, node_id: str) -> None:
        if node_id not in self._position:
            raise KeyError(node_id)

    def is_guard(self, node_id: str) -> bool:
        """Whether the node is a guard (``KeyError`` for an unknown id)."""
        self._check(node_id)
        return self.pipeline.node(node_id).guard

    def predecessors(self, node_id: str) -> tuple[str, ...]:
        """The nodes linked into this one, in declared order: its inputs (``KeyError`` if unknown)."""
        return self._predecessors[node_id]

    def successors(self, node_id: str) -> tuple[str, ...]:
        """The nodes this one is linked into, in declared order (guard precedence not included)."""
        return self._successors[node_id]

    def guarded_by(self, node_id: str) -> tuple[str, ...]:
        """The guards that must let this node run: every guard for a non-guard node, none for a guard."""
        self._check(node_id)
        return () if self.pipeline.node(node_id).guard else self.guards

    def dependencies(self, node_id: str) -> tuple[str, ...]:
        """What must be done before the node starts: its predecessors, then the guards not among them."""
        return self._dependencies[node_id]

    def dependents(self, node_id: str) -> tuple[str, ...]:
        """The nodes that wait for this one: its successors, then (for a guard) every other non-guard."""
        return self._dependents[node_id]

    def link(self, source: str, target: str) -> Link | None:
        """The first declaration of the link ``source -> target`` (its form and edge path), or None."""
        return self._links.get((source, target))

    def links(self) -> list[Link]:
        """Every distinct link, each as first declared, in declared order (guard precedence excluded)."""
        return list(self._links.values())

    def roots(self) -> tuple[str, ...]:
        """The nodes that can start at once (no dependency at all), in declaration order."""
        return tuple(node_id for node_id in self.nodes if not self._dependencies[node_id])

    def sinks(self) -> tuple[str, ...]:
        """The nodes nothing waits for, in declaration order."""
        return tuple(node_id for node_id in self.nodes if not self._dependents[node_id])

    def descendants(self, node_id: str) -> tuple[str, ...]:
        """Every node that (transitively) waits for this one, in declaration order.

        These are the nodes skipped when it fails under ``best_effort`` (or blocked, for a guard
        that says no).
        """
        return tuple(reachable(self._dependents, node_id, self.nodes))

    def template_names(self, node_id: str) -> frozenset[str]:
        """The template variables a ``run`` node is rendered with.

        ``context`` (the pipeline's), ``key`` (the node id), ``input`` (the pipeline input),
        ``results`` (the predecessors' outputs, in declared order), each predecessor whose id is
        an identifier (its output), and the node's own ``vars``.
        """
        node = self.pipeline.node(node_id)
        named = (p for p in self._predecessors[node_id] if _is_identifier(p))
        return frozenset({"context", "key", "input", "results", *named, *node.vars})

    # --- schedules --------------------------------------------------------------------------------

    def _topological_order(self) -> tuple[str, ...]:
        remaining = {node_id: len(self._dependencies[node_id]) for node_id in self.nodes}
        ready = [self._position[node_id] for node_id, count in remaining.items() if count == 0]
        heapq.heapify(ready)
        order: list[str] = []
        while ready:
            node_id = self.nodes[heapq.heappop(ready)]
            order.append(node_id)
            for dependent in self._dependents[node_id]:
                remaining[dependent] -= 1
                if remaining[dependent] == 0:
                    heapq.heappush(ready, self._position[dependent])
        if len(order) != len(self.nodes):  # pragma: no cover - a validated pipeline has no cycle
            raise ValueError(f"pipeline {self.pipeline.name!r} has a cycle")
        return tuple(order)

    def topological_order(self) -> tuple[str, ...]:
        """Every node after all of its dependencies; among ready nodes, the first declared first."""
        return self._order

    def levels(self) -> tuple[tuple[str, ...], ...]:
        """The level-by-level schedule of the tutorial's runner (Kahn's algorithm, by levels).

        Level ``k`` holds the nodes whose dependencies are all in earlier levels; each level is in
        declaration order. fanflow does not run by levels -- this is for comparison.
        """
        level_of: dict[str, int] = {}
        for node_id in self._order:
            level_of[node_id] = 1 + max((level_of[d] for d in self._dependencies[node_id]), default=-1)
        count = max(level_of.values(), default=-1) + 1
        return tuple(tuple(n for n in self.nodes if level_of[n] == level) for level in range(count))

    def _durations(self, durations: Mapping[str, float]) -> dict[str, float]:
        checked: dict[str, float] = {}
        for node_id in self.nodes:
            if node_id not in durations:
                raise ValueError(f"no duration for node {node_id!r}")
            value = float(durations[node_id])
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"duration of node {node_id!r} must be a finite number >= 0, not {value}")
            checked[node_id] = value
        return checked

    def critical_path(self, durations: Mapping[str, float]) -> float:
        """The makespan when each node starts as soon as its own dependencies are done.

        That is the longest chain of dependencies weighted by ``durations`` (one per node):
        the best any scheduler can do with unlimited workers.

        Raises:
            ValueError: a node has no duration, or a negative or non-finite one.
        """
        weights = self._durations(durations)
        finish: dict[str, float] = {}
        for node_id in self._order:
            start = max((finish[d] for d in self._dependencies[node_id]), default=0.0)
            finish[node_id] = start + weights[node_id]
        return max(finish.values(), default=0.0)

    def level_makespan(self, durations: Mapping[str, float]) -> float:
        """The makespan of the tutorial's level-by-level runner with unlimited workers.

        Each level starts when the previous one is all done; within it, the guards run one after
        another, then the other nodes in parallel.

        Raises:
            ValueError: a node has no duration, or a negative or non-finite one.
        """
        weights = self._durations(durations)
        total = 0.0
        for level in self.levels():
            guards = sum(weights[n] for n in level if self.pipeline.node(n).guard)
            others = max((weights[n] for n in level if not self.pipeline.node(n).guard), default=0.0)
            total += guards + others
        return total
