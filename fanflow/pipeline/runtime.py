"""Running a pipeline: each node is sent the moment its own dependencies are done.

A pipeline's job is a job like a fan-out's, in the same job store, run by the same branch machinery:
its ``StoredJob.spec`` is the fan-out of its nodes (one subtask per node, key = node id, see
``node_fanout``), and each node is one ``fanflow.node(job_id, node_id, round)`` task with the
deterministic id ``{job}.r{round}.{node}``. What differs is who sends a node and when:

- at submit the job store keeps, per node, how many dependencies it waits for (``pending``); the
  nodes waiting for none are sent at once, together, as a Celery group;
- a node's outcome is recorded by ``record_outcome.lua`` in one atomic step with its consequences:
  a node that succeeded *releases* its dependents (each one's count drops; the ones reaching zero
  come back as ready, marked queued, and this worker sends them as a group); a node that did not
  *stops* the nodes that can no longer run -- ``skipped`` descendants of a failure under
  ``best_effort``, ``blocked`` descendants of a guard that said no, ``cancelled`` ones under
  ``all_or_nothing`` (every node not yet sent) or below a cancelled node;
- the step that gives the round its last outcome reports it ``complete``, and its worker sends the
  round's merge (``fanflow.merge``), which builds the ``JobResult`` (``finalize_pipeline``).

A fan-in therefore fires when its last dependency's outcome is recorded: exactly once, however
often a message is delivered (an outcome is written once per round; a duplicate's record changes
nothing and releases nothing). A worker that dies after the record but before sending leaves the
ready nodes queued and the merge unsent: the sweeper sends them again (``fanflow.recovery``), as it
sends a node whose worker died mid-run.

Data flow: a node sees only its own predecessors' outputs (``materialize``), in declared order.
"""

from __future__ import annotations

import functools
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, cast

from celery import Celery, group

from fanflow.app import QUEUES
from fanflow.pipeline.rungraph import MERGE_FANOUT, RunGraph
from fanflow.pipeline.spec import Pipeline, guard_verdict
from fanflow.result import ErrorInfo, OutcomeStatus, SubtaskOutcome
from fanflow.spec import AllOrNothing, ConcatenateMerge, FanOut, PyCall, Subtask
from fanflow.store import JobStore, Recorded, StoredJob
from fanflow.synthesis import labelled_outputs, output_text
from fanflow.tasks import NODE_TASK

if TYPE_CHECKING:
    from fanflow.branch import BranchRunner

__all__ = [
    "PipelineRuntime",
    "format_inputs",
    "node_fanout",
    "publish_nodes",
]


def node_fanout(pipeline: Pipeline, graph: RunGraph | None = None) -> FanOut:
    """The fan-out of a pipeline's run nodes: one subtask per node (key = id), a fan-out node's
    branches (``N.<key>``) just before it (``fanflow.pipeline.rungraph``).

    It is what the job store keeps as the job's spec, so everything that works on a fan-out's
    branches (leases, redelivery, limits, budget, status) works on the nodes. Its merge is unused.
    """
    graph = graph or RunGraph(pipeline)
    return FanOut(
        name=pipeline.name, context=pipeline.context, subtasks=[graph.subtask(n) for n in graph.nodes],
        merge=ConcatenateMerge(), failure=pipeline.failure, budget=pipeline.budget,
        deadline_s=pipeline.deadline_s, idempotency_key=pipeline.idempotency_key,
    )  # fmt: skip


def format_inputs(inputs: dict[str, Any]) -> str:
    """A node's ``{results}``: each predecessor's output under a ``## <id>`` heading, in declared order
    (the format of a ``synthesize`` merge's ``{results}``)."""
    return labelled_outputs(inputs.items())


def publish_nodes(app: Celery, job_id: str, spec: FanOut, round_: int, node_ids: Sequence[str]) -> None:
    """Send ``node_ids`` of round ``round_`` as one Celery group (each on its kind's queue).

    Task ids are ``{job}.r{round}.{node}``, the same on every send, so Flower and the sweeper know
    each node's message; the node's lease in the job store makes a second delivery harmless.
    """
    if not node_ids:
        return
    signatures = []
    for node_id in node_ids:
        subtask = spec.subtask(node_id)
        args = (job_id, node_id, round_)
        signatures.append(
            app.signature(
                NODE_TASK,
                args=args,
                queue=QUEUES[subtask.run.kind],
                ignore_result=True,
                shadow=f"{NODE_TASK}[{spec.name}:{node_id}]",
                task_id=f"{job_id}.r{round_}.{node_id}",
            )
        )
    if len(signatures) == 1:
        signatures[0].apply_async()
        return
    group(signatures).apply_async(group_id=f"{job_id}.r{round_}.after.{'+'.join(node_ids)[:80]}")


_STOP_REASONS = {
    OutcomeStatus.SKIPPED: ("UpstreamFailed", "skipped: upstream node {node!r} failed"),
    OutcomeStatus.BLOCKED: ("Blocked", "blocked by guard {node!r}"),
    OutcomeStatus.CANCELLED: ("Cancelled", "stopped: upstream node {node!r} was cancelled"),
}


def _stopped(
    node_id: str, round_: int, status: OutcomeStatus, because: str, message: str | None = None
) -> SubtaskOutcome:
    kind, template = _STOP_REASONS[status]
    return SubtaskOutcome(
        key=node_id, status=status, round=round_, finished_at=time.time(),
        error=ErrorInfo(type=kind, message=message or template.format(node=because),
                        retryable=status is not OutcomeStatus.BLOCKED),
    )  # fmt: skip


class PipelineRuntime:
    """A worker's side of pipelines: what a node sees, what its outcome sets off.

    One per worker process (``fanflow.app`` hands it to the ``BranchRunner``); thread-safe.
    """

    def __init__(self, app: Celery, store: JobStore, *, cache_size: int = 256) -> None:
        self.app = app
        self.store = store
        self._graphs: OrderedDict[str, RunGraph] = OrderedDict()
        self._lock = threading.Lock()
        self._cache_size = cache_size

    def graph(self, job_id: str, job: StoredJob) -> RunGraph:
        """The run graph of a pipeline job, built once per job and cached."""
        with self._lock:
            graph = self._graphs.get(job_id)
            if graph is not None:
                self._graphs.move_to_end(job_id)
                return graph
        assert job.pipeline is not None
        graph = RunGraph(job.pipeline)
        with self._lock:
            self._graphs[job_id] = graph
            while len(self._graphs) > self._cache_size:
                self._graphs.popitem(last=False)
        return graph

    def materialize(self, job_id: str, job: StoredJob, subtask: Subtask) -> Subtask:
        """The node's subtask with its inputs filled in: its predecessors' outputs, in declared order.

        Template variables: ``{input}`` (the pipeline's input), ``{results}`` (every predecessor's
        output under a ``## <id>`` heading), ``{<predecessor id>}`` (one output, for ids that are
        identifiers), besides the node's own ``vars``, ``{context}`` and ``{key}``. A python node
        with ``pass_inputs`` gets ``inputs={id: output}``; a fan-out node's fan-in gets its
        branches' outcomes.
        """
        assert job.pipeline is not None
        graph = self.graph(job_id, job)
        branches = graph.branches.get(subtask.key)
        if branches is not None:
            fanout = job.pipeline.node(subtask.key).fanout
            assert fanout is not None
            keys = [branch.key for branch in fanout.subtasks]
            outcomes = [
                {**outcome.model_dump(mode="json"), "key": key}
                for key, outcome in zip(keys, self._outcomes(job_id, branches), strict=True)
                if outcome is not None
            ]
            kwargs = {"fanout": fanout.model_dump(mode="json"), "outcomes": outcomes}
            return subtask.model_copy(update={"run": PyCall(function=MERGE_FANOUT, kwargs=kwargs)})
        predecessors = graph.predecessors(subtask.key)
        inputs = {
            node_id: outcome.output
            for node_id, outcome in zip(predecessors, self._outcomes(job_id, predecessors), strict=True)
            if outcome is not None and outcome.succeeded
        }
        variables = {
            **subtask.vars, "input": job.pipeline.input or "", "results": format_inputs(inputs),
            **{node_id: output_text(output) for node_id, output in inputs.items() if node_id.isidentifier()},
        }  # fmt: skip
        run = subtask.run
        if isinstance(run, PyCall) and run.pass_inputs:
            run = run.model_copy(update={"kwargs": {**run.kwargs, "inputs": inputs}})
        return subtask.model_copy(update={"vars": variables, "run": run})

    def _outcomes(self, job_id: str, node_ids: Sequence[str]) -> list[SubtaskOutcome | None]:
        if not node_ids:
            return []
        key = self.store.keys(job_id).outcomes
        raw = cast(list[str | None], self.store.client.hmget(key, list(node_ids)))
        return [SubtaskOutcome.model_validate_json(item) if item else None for item in raw]

    def context(self, job_id: str, job: StoredJob, key: str) -> Any:
        """The shared context a node sees (a fan-out node's branch: its fan-out's)."""
        return self.graph(job_id, job).context(key)

    def judge(self, job: StoredJob, outcome: SubtaskOutcome) -> SubtaskOutcome:
        """A guard's outcome as recorded: a guard whose output carries no verdict failed (an
        error is never taken as a "no")."""
        assert job.pipeline is not None
        if not outcome.succeeded or not RunGraph.is_guard_of(job.pipeline, outcome.key):
            return outcome
        try:
            guard_verdict(outcome.output)
        except ValueError as exc:
            message = f"{exc}; it gave {output_text(outcome.output)[:300]}"
            error = ErrorInfo(type="GuardError", message=message)
            return outcome.model_copy(update={"status": OutcomeStatus.FAILED, "error": error})
        return outcome

    def record(
        self, runner: BranchRunner, job_id: str, job: StoredJob, outcome: SubtaskOutcome, token: str
    ) -> Recorded:
        """Record a node's outcome with what it sets off; send the nodes it made ready (and the
        merge, when it was the round's last outcome)."""
        assert job.pipeline is not None
        graph = self.graph(job_id, job)
        round_ = outcome.round
        members = None
        if round_ > 0:
            members = runner.patiently(lambda: self.store.round_keys(job_id), "read a round's nodes")
        in_round = set(members) if members is not None else set(graph.nodes)
        release, stop = self._consequences(job, graph, outcome, in_round)
        # A fan-out node's branch never cancels the pipeline: its fan-out's own policy decides.
        cancel = isinstance(job.spec.failure, AllOrNothing) and outcome.key not in graph.parent
        spend = outcome.usage_by_model if job.spec.budget is None else None
        recorded = runner.patiently(
            lambda: self.store.record_outcome(job_id, outcome, cancel_on_failure=cancel, token=token,
                                              spend=spend, release=release, stop=stop),
            "recorded an outcome",
        )  # fmt: skip
        if recorded.ready:
            ready = list(recorded.ready)
            send = functools.partial(publish_nodes, self.app, job_id, job.spec, round_, ready)
            runner.patiently(send, "sent the next nodes")
        if recorded.complete:
            from fanflow.canvas import republish_merge

            runner.patiently(lambda: republish_merge(self.app, job_id, job.spec, round_), "sent the merge")
        return recorded

    def _consequences(
        self, job: StoredJob, graph: RunGraph, outcome: SubtaskOutcome, in_round: set[str]
    ) -> tuple[list[str], list[SubtaskOutcome]]:
        """(dependents to release, outcomes of nodes that will not run) after ``outcome``."""
        node_id, round_ = outcome.key, outcome.round
        below = [n for n in graph.descendants(node_id) if n in in_round]
        if node_id in graph.parent and outcome.status is not OutcomeStatus.CANCELLED:
            return [n for n in graph.dependents(node_id) if n in in_round], []  # its fan-in decides
        if outcome.succeeded:
            if graph.is_guard(node_id) and not guard_verdict(outcome.output):
                return [], [_stopped(n, round_, OutcomeStatus.BLOCKED, node_id) for n in below]
            return [n for n in graph.dependents(node_id) if n in in_round], []
        if outcome.status is OutcomeStatus.FAILED and isinstance(job.spec.failure, AllOrNothing):
            message = f"stopped: node {node_id!r} failed under all_or_nothing"
            others = [n for n in graph.nodes if n in in_round and n != node_id]
            return [], [_stopped(n, round_, OutcomeStatus.CANCELLED, node_id, message) for n in others]
        if outcome.status is OutcomeStatus.FAILED:
            return [], [_stopped(n, round_, OutcomeStatus.SKIPPED, node_id) for n in below]
        if outcome.status is OutcomeStatus.BLOCKED:
            return [], [_stopped(n, round_, OutcomeStatus.BLOCKED, node_id) for n in below]
        return [], [_stopped(n, round_, OutcomeStatus.CANCELLED, node_id) for n in below]
