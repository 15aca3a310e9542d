"""A pipeline's fan-in: every node's outcome, the pipeline's status, the shown outputs, in one ``JobResult``.

Status: ``succeeded`` when every node succeeded; ``blocked`` when a guard said no and nothing else
went wrong (a decision, not a failure: ``blocked_by`` names the guard); otherwise the pipeline's
failure policy decides as for a fan-out (``best_effort``: ``partial`` while any node succeeded;
``all_or_nothing``: ``failed`` with the first failure); a user's cancel wins over all of it.
``merged`` is ``{node id: output}`` of the succeeded nodes with ``show: true`` -- or, when no node
shows, of the succeeded sink nodes -- in declaration order.
"""

from __future__ import annotations

from typing import Any

from fanflow.pipeline.graph import Graph
from fanflow.policy import Verdict, evaluate_policy
from fanflow.result import ErrorInfo, JobStatus, OutcomeStatus, SubtaskOutcome
from fanflow.store import StoredJob

__all__ = ["pipeline_merged", "pipeline_verdict"]


def pipeline_verdict(
    job: StoredJob, outcomes: list[SubtaskOutcome], cancel_reason: str | None
) -> tuple[Verdict, str | None]:
    """The pipeline's status (and error), and the guard that said no, if one did.

    A fan-out node's branches do not count: the node's own outcome says how its fan-out went.
    """
    assert job.pipeline is not None
    ids = {node.id for node in job.pipeline.nodes}
    branches = [o for o in outcomes if o.key not in ids]
    outcomes = [o for o in outcomes if o.key in ids]
    blocked = [o for o in outcomes if o.status is OutcomeStatus.BLOCKED]
    guard = None
    if blocked and blocked[0].error is not None:
        guard = blocked[0].error.message.removeprefix("blocked by guard ").strip("'\"")
    others = [o for o in outcomes if o.status not in (OutcomeStatus.SUCCEEDED, OutcomeStatus.BLOCKED)]
    if blocked and not others and cancel_reason != "user":
        message = f"guard {guard!r} said no: {len(blocked)} node(s) blocked"
        return Verdict(JobStatus.BLOCKED, ErrorInfo(type="Blocked", message=message)), guard
    running = [o for o in outcomes if o.status is not OutcomeStatus.BLOCKED]
    verdict = evaluate_policy(job.spec.failure, job.spec.subtasks, running, cancel_reason=cancel_reason)
    if verdict.status is JobStatus.SUCCEEDED and any(not o.succeeded for o in branches):
        verdict = Verdict(JobStatus.PARTIAL)  # a fan-out node merged without some of its branches
    return verdict, guard


def pipeline_merged(job: StoredJob, outcomes: list[SubtaskOutcome]) -> dict[str, Any]:
    """``{node id: output}`` of the succeeded shown nodes (or sinks, when none shows), declared order."""
    assert job.pipeline is not None
    shown = {node.id for node in job.pipeline.nodes if node.show}
    if not shown:
        shown = set(Graph(job.pipeline).sinks())
    return {o.key: o.output for o in outcomes if o.key in shown and o.succeeded}
