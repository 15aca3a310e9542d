"""Whether a branch's answer is accepted: JSON output, its success criteria, and the error a branch
fails with when its last answer was rejected (``fanflow.branch`` asks a model again in between)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from fanflow.errors import OutputValidationError, SuccessCriteriaError
from fanflow.executors import Execution
from fanflow.spec import Subtask, SuccessCriteria

__all__ = ["Accepted", "check_success", "final_rejection", "judge"]


@dataclass(frozen=True, slots=True)
class Accepted:
    """An accepted answer: its output, as JSON values."""

    output: Any


def judge(subtask: Subtask, execution: Execution) -> Accepted | BaseException:
    """The attempt's output if it is accepted, else why not."""
    if execution.rejection is not None:
        return execution.rejection
    try:
        output = json_output(execution.output)
    except TypeError as exc:
        return exc
    if subtask.success is not None:
        try:
            check_success(output, subtask.success)
        except SuccessCriteriaError as exc:
            return OutputValidationError(str(exc), raw=raw_text(output))
    return Accepted(output)


def raw_text(output: Any) -> str:
    """The output as the text a model gave (for the feedback of a rejected answer)."""
    return output if isinstance(output, str) else json.dumps(output, ensure_ascii=False)


def final_rejection(rejection: OutputValidationError, attempts: int, fed_back: bool) -> SuccessCriteriaError:
    """The error a branch fails with when its last answer was rejected."""
    if not fed_back:
        return SuccessCriteriaError(str(rejection))
    asked = "once" if attempts == 1 else f"{attempts} times"
    message = f"asked {asked}; the last answer was rejected: {rejection}"
    return OutputValidationError(message, raw=rejection.raw)


def json_output(output: Any) -> Any:
    """The output as plain JSON values (TypeError when it is not JSON-serializable)."""
    try:
        return json.loads(json.dumps(output))
    except (TypeError, ValueError) as exc:
        raise TypeError(f"the output is not JSON-serializable: {exc}") from exc


def check_success(output: Any, criteria: SuccessCriteria) -> None:
    """Check an output against a branch's success criteria.

    Raises:
        SuccessCriteriaError: saying which criterion failed.
    """
    if criteria.not_empty and output in (None, "", [], {}):
        raise SuccessCriteriaError("output is empty")
    if criteria.required_fields:
        if not isinstance(output, dict):
            raise SuccessCriteriaError(f"output must be an object with fields {criteria.required_fields}")
        missing = [name for name in criteria.required_fields if name not in output]
        if missing:
            raise SuccessCriteriaError(f"output lacks required fields {missing}")
    text = output if isinstance(output, str) else json.dumps(output)
    absent = [needle for needle in criteria.contains if needle not in text]
    if absent:
        raise SuccessCriteriaError(f"output does not contain {absent}")
    if criteria.max_chars is not None and len(text) > criteria.max_chars:
        raise SuccessCriteriaError(
            f"output has {len(text)} characters, more than max_chars={criteria.max_chars}"
        )
