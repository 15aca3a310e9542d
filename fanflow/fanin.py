"""The fan-in: apply the failure policy and the merge to the stored outcomes, store the JobResult."""

from __future__ import annotations

import time

from pydantic import ValidationError

from fanflow.errors import MergeError
from fanflow.merge import merge_outputs
from fanflow.policy import evaluate_policy
from fanflow.result import ErrorInfo, JobResult, JobStatus, OutcomeStatus, SubtaskOutcome, Usage
from fanflow.spec import SynthesizeMerge
from fanflow.spending import Spending
from fanflow.store import JobStore
from fanflow.synthesis import synthesize

__all__ = ["finalize_job"]


def _lost(key: str, round_: int) -> SubtaskOutcome:
    # Only reachable if a branch's record was lost (e.g. its keys were deleted by hand).
    return SubtaskOutcome(
        key=key, status=OutcomeStatus.FAILED, round=round_,
        error=ErrorInfo(type="LostBranchError", message="no outcome was recorded", retryable=True),
    )  # fmt: skip


def finalize_job(store: JobStore, job_id: str, round_: int, *, spending: Spending | None = None) -> JobResult:
    """Build the job's result from its stored outcomes and save it (idempotent: same inputs, same result).

    A ``synthesize`` merge makes its model call through ``spending`` (limits and budget).
    """
    job = store.load_job(job_id)
    meta = store.meta(job_id)
    if round_ < meta.round:  # a late merge of an older round: the newer round owns the result
        existing = store.result(job_id)
        if existing is not None:
            return existing
    spec = job.spec
    stored = store.outcomes(job_id)
    outcomes = [stored.get(s.key) or _lost(s.key, round_) for s in spec.subtasks]
    blocked_by = None
    if job.pipeline is not None:
        from fanflow.pipeline.finalize import pipeline_verdict

        verdict, blocked_by = pipeline_verdict(job, outcomes, store.cancel_reason(job_id))
    else:
        reason = store.cancel_reason(job_id)
        verdict = evaluate_policy(spec.failure, spec.subtasks, outcomes, cancel_reason=reason)
    status, error, merged, merge_usage = verdict.status, verdict.error, None, Usage()
    if job.pipeline is not None:
        from fanflow.pipeline.finalize import pipeline_merged

        merged = pipeline_merged(job, outcomes)
    elif verdict.merges:
        try:
            if isinstance(spec.merge, SynthesizeMerge):
                merged, merge_usage = synthesize(
                    spec.merge, outcomes, context=spec.context, job_id=job_id, budget=spec.budget,
                    spending=spending or Spending(store, None),
                )  # fmt: skip
            else:
                merged = merge_outputs(spec.merge, [o for o in outcomes if o.succeeded], context=spec.context)
        except MergeError as exc:
            status, error = JobStatus.FAILED, ErrorInfo(type=type(exc).__name__, message=str(exc))
    by_model = store.usage_by_model(job_id)
    usage = sum(by_model.values(), Usage()) if by_model else sum((o.usage for o in outcomes), Usage())
    fields = dict(
        job_id=job_id, name=spec.name, status=status, error=error, outcomes=outcomes,
        flagged=[o.key for o in outcomes if not o.succeeded and o.status is not OutcomeStatus.BLOCKED],
        cancelled=[o.key for o in outcomes if o.status is OutcomeStatus.CANCELLED],
        usage=usage, usage_by_model=by_model, merge_usage=merge_usage,
        budget_exhausted=store.cancel_reason(job_id) == "budget", blocked_by=blocked_by,
        round=max(round_, meta.round), created_at=job.created_at, finished_at=time.time(),
    )  # fmt: skip
    try:
        result = JobResult.model_validate({**fields, "merged": merged})
    except ValidationError as exc:
        message = f"the merged output is not JSON: {exc.errors(include_url=False)[0]['msg']}"
        result = JobResult.model_validate(
            {**fields, "status": JobStatus.FAILED, "error": ErrorInfo(type="MergeError", message=message)}
        )
    store.save_result(job_id, result)
    return result
