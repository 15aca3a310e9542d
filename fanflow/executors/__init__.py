"""Executors run one branch's ``TaskSpec`` and return its output and usage.

An executor is a callable ``(spec, context) -> Execution``; it raises on failure (the branch runner
turns the exception into an outcome). This version executes ``python``; ``llm`` and ``agent`` specs
validate but are refused at submit time until their executors land.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fanflow.executors.python import execute_python
from fanflow.result import Usage
from fanflow.spec import TaskSpec

__all__ = ["EXECUTABLE_KINDS", "Execution", "Executor", "execute"]


@dataclass(frozen=True, slots=True)
class Execution:
    """What an executor returns: the output (JSON-serializable) and what it spent."""

    output: Any
    usage: Usage = field(default_factory=Usage)


Executor = Callable[[Any, Any], Execution]


def _python(spec: Any, context: Any) -> Execution:
    return Execution(output=execute_python(spec, context))


_EXECUTORS: dict[str, Executor] = {"python": _python}

EXECUTABLE_KINDS = frozenset(_EXECUTORS)


def execute(spec: TaskSpec, context: Any) -> Execution:
    """Run ``spec`` with the fan-out's shared ``context``.

    Raises:
        NotImplementedError: no executor for this kind in this version (refused at submit already).
        Exception: whatever the work raised.
    """
    executor = _EXECUTORS.get(spec.kind)
    if executor is None:
        raise NotImplementedError(f"no executor for kind {spec.kind!r} in this version of fanflow")
    return executor(spec, context)
