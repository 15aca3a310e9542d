"""The ``python`` executor: import ``function`` and call it with the spec's ``kwargs``."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from fanflow.imports import import_object

__all__ = ["execute_python"]


@lru_cache(maxsize=512)
def _function(path: str) -> Any:
    function = import_object(path)
    if not callable(function):
        raise TypeError(f"{path!r} is not callable")
    return function


def execute_python(spec: Any, context: Any) -> Any:
    """Call ``spec.function(**spec.kwargs)`` (plus ``context=`` when ``spec.pass_context``)."""
    kwargs = dict(spec.kwargs)
    if spec.pass_context:
        kwargs["context"] = context
    return _function(spec.function)(**kwargs)
