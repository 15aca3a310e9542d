"""The graph a pipeline runs as: its ``Graph``, with every fan-out node expanded into its branches.

A fan-out node ``N`` (``PipelineNode.fanout``) runs as

- its **branches** ``N.<key>``, one run node per subtask of the fan-out: they wait for ``N``'s own
  dependencies, are sent together (one Celery group) when those are done, see ``N``'s inputs
  (``{input}``, ``{results}``, ``{<predecessor>}``) beside their own ``vars`` and the fan-out's
  ``context``;
- ``N`` itself, the **fan-in**: it waits for every branch -- a failed branch releases it like a
  succeeded one -- and applies the fan-out's own failure policy and merge (``merge_fanout``); its
  output is the merged output, and it fails when the fan-out's policy says the fan-out failed.

Everything else (the pipeline's failure policy, what a node's failure stops, ``retry_failed``)
sees ``N`` as one node; its branches' outcomes are in the job's result too.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from fanflow.errors import MergeError
from fanflow.merge import merge_outputs
from fanflow.pipeline.graph import Graph, reachable
from fanflow.pipeline.spec import Pipeline
from fanflow.policy import evaluate_policy
from fanflow.result import SubtaskOutcome
from fanflow.spec import FanOut, PyCall, Subtask

__all__ = ["MERGE_FANOUT", "RunGraph", "merge_fanout"]

#: The function a fan-out node's fan-in runs (``fanflow.pipeline.rungraph:merge_fanout``).
MERGE_FANOUT = f"{__name__}:merge_fanout"
#: A subtask's options, which a pipeline node has too (its vars, limits, timeout, retries ...).
_NODE_OPTIONS = tuple(name for name in Subtask.model_fields if name not in ("key", "run"))


class RunGraph:
    """What a pipeline's job schedules: run nodes and their dependencies (see the module doc).

    Attributes:
        pipeline: the pipeline.
        graph: its ``Graph`` (fan-out nodes as single nodes).
        nodes: every run node: each fan-out node's branches just before it, otherwise as declared.
        branches: fan-out node id -> its branch ids, in the fan-out's order.
        parent: branch id -> its fan-out node.
    """

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline
        self.graph = graph = Graph(pipeline)
        self.branches: dict[str, tuple[str, ...]] = {}
        self.parent: dict[str, str] = {}
        self._subtasks: dict[str, Subtask] = {}
        nodes: list[str] = []
        for node_id in graph.nodes:
            fanout = pipeline.node(node_id).fanout
            if fanout is not None:
                ids = tuple(f"{node_id}.{subtask.key}" for subtask in fanout.subtasks)
                self.branches[node_id] = ids
                for branch_id, subtask in zip(ids, fanout.subtasks, strict=True):
                    self.parent[branch_id] = node_id
                    self._subtasks[branch_id] = subtask
                nodes.extend(ids)
            nodes.append(node_id)
        self.nodes: tuple[str, ...] = tuple(nodes)
        self._dependencies: dict[str, tuple[str, ...]] = {}
        self._predecessors: dict[str, tuple[str, ...]] = {}
        for node_id in nodes:
            parent = self.parent.get(node_id)
            if parent is not None:
                self._dependencies[node_id] = graph.dependencies(parent)
                self._predecessors[node_id] = graph.predecessors(parent)
            elif node_id in self.branches:
                self._dependencies[node_id] = self.branches[node_id]
                self._predecessors[node_id] = ()
            else:
                self._dependencies[node_id] = graph.dependencies(node_id)
                self._predecessors[node_id] = graph.predecessors(node_id)
        dependents: dict[str, list[str]] = {node_id: [] for node_id in nodes}
        for node_id in nodes:
            for dependency in self._dependencies[node_id]:
                dependents[dependency].append(node_id)
        self._dependents = {node_id: tuple(found) for node_id, found in dependents.items()}

    def dependencies(self, node_id: str) -> tuple[str, ...]:
        """What must be done before the run node starts."""
        return self._dependencies[node_id]

    def dependents(self, node_id: str) -> tuple[str, ...]:
        """The run nodes that wait for this one."""
        return self._dependents[node_id]

    def predecessors(self, node_id: str) -> tuple[str, ...]:
        """The nodes whose outputs feed this one, in declared order (a branch: its fan-out node's)."""
        return self._predecessors[node_id]

    def roots(self) -> list[str]:
        """The run nodes sent at once."""
        return [node_id for node_id in self.nodes if not self._dependencies[node_id]]

    def descendants(self, node_id: str) -> list[str]:
        """Every run node that (transitively) waits for this one, in run-node order."""
        return reachable(self._dependents, node_id, self.nodes)

    def closure(self, node_ids: Iterable[str]) -> list[str]:
        """``node_ids`` and everything that waits for them, in run-node order."""
        chosen = set(node_ids)
        for node_id in list(chosen):
            chosen.update(self.descendants(node_id))
        return [n for n in self.nodes if n in chosen]

    def pending_counts(self, node_ids: Iterable[str]) -> dict[str, int]:
        """Each of ``node_ids``' count of dependencies among them (a round waits only for itself)."""
        members = set(node_ids)
        return {n: sum(1 for d in self._dependencies[n] if d in members) for n in self.nodes if n in members}

    def is_guard(self, node_id: str) -> bool:
        """Whether the run node is a guard (branches never are)."""
        return self.is_guard_of(self.pipeline, node_id)

    @staticmethod
    def is_guard_of(pipeline: Pipeline, node_id: str) -> bool:
        """Whether run node ``node_id`` of ``pipeline`` is a guard (a branch id is no node's: never)."""
        try:
            return pipeline.node(node_id).guard
        except KeyError:
            return False

    def subtask(self, node_id: str) -> Subtask:
        """The subtask a run node runs (a fan-in's is ``merge_fanout``, filled in as it starts)."""
        branch = self._subtasks.get(node_id)
        if branch is not None:
            return branch.model_copy(update={"key": node_id})
        node = self.pipeline.node(node_id)
        run = node.run if node.run is not None else PyCall(function=MERGE_FANOUT)
        return Subtask(key=node.id, run=run, **{name: getattr(node, name) for name in _NODE_OPTIONS})

    def context(self, node_id: str) -> Any:
        """The shared context a run node sees: its fan-out's for a branch, else the pipeline's."""
        parent = self.parent.get(node_id)
        fanout = self.pipeline.node(parent).fanout if parent is not None else None
        if fanout is not None and fanout.context is not None:
            return fanout.context
        return self.pipeline.context


def merge_fanout(fanout: dict[str, Any], outcomes: list[dict[str, Any]]) -> Any:
    """A fan-out node's fan-in: its fan-out's failure policy and merge over its branches' outcomes.

    ``outcomes`` are the branches' in the fan-out's order, keyed by their own subtask keys.

    Raises:
        MergeError: the fan-out's policy says it failed (naming why), or the merge failed.
    """
    spec = FanOut.model_validate(fanout)
    results = [SubtaskOutcome.model_validate(outcome) for outcome in outcomes]
    verdict = evaluate_policy(spec.failure, spec.subtasks, results, cancel_reason=None)
    if not verdict.merges:
        error = verdict.error
        raise MergeError(f"the fan-out failed: {error.message if error else verdict.status.value}")
    return merge_outputs(spec.merge, [o for o in results if o.succeeded], context=spec.context)
