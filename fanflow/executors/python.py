"""The ``python`` executor: import ``function`` and call it with the spec's ``kwargs``."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from fanflow.errors import OutputValidationError
from fanflow.executors import BranchInput, Execution
from fanflow.imports import import_object
from fanflow.result import Usage
from fanflow.spec import PyCall

__all__ = ["PYTHON_EXECUTOR", "PythonExecutor", "execute_python"]

_NOTHING = Usage()


@lru_cache(maxsize=512)
def _function(path: str) -> Any:
    function = import_object(path)
    if not callable(function):
        raise TypeError(f"{path!r} is not callable")
    return function


def execute_python(spec: PyCall, context: Any) -> Any:
    """Call ``spec.function(**spec.kwargs)`` (plus ``context=`` when ``spec.pass_context``)."""
    kwargs = dict(spec.kwargs)
    if spec.pass_context:
        kwargs["context"] = context
    return _function(spec.function)(**kwargs)


class PythonExecutor:
    """Runs a ``PyCall``; it spends nothing the limits count unless its subtask names limit keys."""

    retries_rejections = False
    enforces_timeout = False

    def prepare(self, spec: PyCall, branch: BranchInput) -> tuple[PyCall, Any]:
        """The call and the fan-out's context (a Python call has no templates)."""
        return spec, branch.context

    def estimate(self, prepared: tuple[PyCall, Any]) -> Usage:
        """Nothing: a Python call reserves no tokens."""
        return _NOTHING

    def limit_keys(self, spec: PyCall) -> list[str]:
        """None besides the subtask's own ``limits``."""
        return []

    def execute(self, prepared: tuple[PyCall, Any]) -> Execution:
        """Call the function."""
        spec, context = prepared
        return Execution(output=execute_python(spec, context))

    def feedback(self, prepared: tuple[PyCall, Any], rejection: OutputValidationError) -> tuple[PyCall, Any]:
        """The same call (a function is not told why its output was rejected)."""
        return prepared


PYTHON_EXECUTOR = PythonExecutor()
