"""The ``synthesize`` merge: one model call that receives every branch's output and writes the merge.

Its prompt's ``{results}`` holds every succeeded branch's output in declared order, each under a
``## <key>`` heading; ``{flagged}`` lists the branches that did not succeed with their errors (or
``(none)``); ``{context}`` is the fan-out's shared context. The call goes through the same limits
and budget as a branch's (``fanflow.spending``), its spend counts in the job's usage, and an
answer that fails its ``output_schema`` is asked again with the reasons fed back.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Iterable
from typing import Any

from fanflow.admission import Deferral
from fanflow.errors import MergeError, RateLimitedError, TransientError
from fanflow.executors import BranchInput, Execution
from fanflow.executors.model import MODEL_EXECUTOR
from fanflow.result import OutcomeStatus, SubtaskOutcome, Usage
from fanflow.spec import Budget, SynthesizeMerge
from fanflow.spending import Spending, Ticket

__all__ = ["MERGE_KEY", "format_flagged", "format_results", "labelled_outputs", "output_text", "synthesize"]

#: The branch key a merge's spend is recorded under.
MERGE_KEY = "#merge"
#: Attempts of the synthesis call (transient errors and rejected answers).
ATTEMPTS = 3
#: 429s the synthesis call rides out before it gives up.
MAX_THROTTLED = 20


def output_text(output: Any) -> str:
    """An output as a prompt or a reader sees it: a string as it is, anything else as indented JSON."""
    return output if isinstance(output, str) else json.dumps(output, ensure_ascii=False, indent=2)


def labelled_outputs(outputs: Iterable[tuple[str, Any]]) -> str:
    """Outputs in the order given, each under a ``## <label>`` heading (the ``{results}`` format)."""
    return "\n\n".join(f"## {label}\n{output_text(output)}" for label, output in outputs)


def format_results(outcomes: list[SubtaskOutcome]) -> str:
    """Succeeded outputs in declared order, each under a ``## <key>`` heading."""
    return labelled_outputs((o.key, o.output) for o in outcomes if o.succeeded)


def format_flagged(outcomes: list[SubtaskOutcome]) -> str:
    """One line per branch that did not succeed: ``- key (status): Type: message``; or ``(none)``."""
    lines = []
    for outcome in outcomes:
        if outcome.status is OutcomeStatus.SUCCEEDED:
            continue
        error = f": {outcome.error.type}: {outcome.error.message}" if outcome.error else ""
        lines.append(f"- {outcome.key} ({outcome.status.value}){error}")
    return "\n".join(lines) or "(none)"


def synthesize(
    spec: SynthesizeMerge,
    outcomes: list[SubtaskOutcome],
    *,
    context: Any,
    job_id: str,
    budget: Budget | None,
    spending: Spending,
) -> tuple[Any, Usage]:
    """Run the synthesis call; return its output and what it spent.

    Raises:
        MergeError: the call could not be made (budget exhausted, the provider kept failing, the
            answer kept failing its schema).
    """
    executor = MODEL_EXECUTOR
    variables = {"results": format_results(outcomes), "flagged": format_flagged(outcomes)}
    try:
        original = prepared = executor.prepare(spec.run, BranchInput(MERGE_KEY, context, variables))
    except KeyError as exc:
        raise MergeError(f"merge.run: unknown template variable {{{exc.args[0]}}}") from None
    spent = Usage()
    attempt = throttled = 0
    while True:
        ticket = spending.admit(
            job_id, executor.limit_keys(spec.run), executor.estimate(prepared), budget=budget,
            model=spec.run.model, may_defer=False, cancelled=lambda: False,
        )  # fmt: skip
        if not isinstance(ticket, Ticket):
            assert not isinstance(ticket, Deferral)  # may_defer=False
            raise MergeError("the job's budget was exhausted before the synthesis call")
        attempt += 1
        try:
            execution: Execution = executor.execute(prepared)
        except RateLimitedError as exc:
            spending.release(job_id, ticket, key=MERGE_KEY)
            throttled += 1
            if throttled > MAX_THROTTLED:
                raise MergeError(f"the synthesis call was rate-limited {throttled} times: {exc}") from exc
            attempt -= 1
            if spending.gate is not None:
                spending.gate.cool_down([spec.run.model], exc.retry_after_s or 5.0)
            else:
                time.sleep(exc.retry_after_s or 5.0)
            continue
        except TransientError as exc:
            spending.release(job_id, ticket, key=MERGE_KEY)
            if attempt >= ATTEMPTS:
                raise MergeError(f"the synthesis call failed {attempt} times: {exc}") from exc
            time.sleep(exc.retry_after_s or min(8.0, 2.0**attempt) * random.random())
            continue
        except Exception as exc:
            spending.release(job_id, ticket, key=MERGE_KEY)
            raise MergeError(f"the synthesis call failed: {type(exc).__name__}: {exc}") from exc
        spending.settle(job_id, ticket, execution, key=MERGE_KEY)
        spent += execution.usage
        if execution.rejection is None:
            return execution.output, spent
        if attempt >= ATTEMPTS:
            raise MergeError(f"the synthesis answer was rejected {attempt} times: {execution.rejection}")
        prepared = executor.feedback(original, execution.rejection)
