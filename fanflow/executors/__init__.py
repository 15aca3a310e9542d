"""Executors run one branch's ``TaskSpec`` and report its output and what it spent.

The seam with the shared limits (DESIGN §4): an executor neither knows nor calls the limiter or the
budget. It prepares the call (renders its templates), estimates what the call may spend, names the
limit keys it consumes by default (a model call: its model), executes, and — for a model call
whose answer failed validation — prepares the same request again with the failure fed back. The
branch runner owns the loop: prepare → estimate → admit (limits and budget) → execute → settle.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cache
from typing import Any, Protocol

from fanflow.errors import OutputValidationError
from fanflow.result import Usage

__all__ = ["EXECUTABLE_KINDS", "BranchInput", "Execution", "Executor", "executor_for"]


@dataclass(frozen=True, slots=True)
class BranchInput:
    """What a branch's executor sees besides its spec."""

    key: str
    context: Any
    vars: Mapping[str, Any] = field(default_factory=dict)
    timeout_s: float | None = None
    #: True once the branch's job is cancelled: long work (an agent run) stops when it says so.
    cancelled: Callable[[], bool] | None = None

    def variables(self) -> dict[str, Any]:
        """Template variables: ``{context}``, ``{key}`` and the subtask's own ``vars``."""
        return {**self.vars, "context": "" if self.context is None else self.context, "key": self.key}


@dataclass(frozen=True, slots=True)
class Execution:
    """What one attempt produced.

    Attributes:
        output: the branch's output (JSON-serializable).
        usage: what the attempt spent (tokens, cost, calls).
        model: the ``provider:name`` that spent it (usage per model; its limit key).
        headers: the provider's response headers (rate-limit state for the shared limits).
        rejection: the call succeeded but its answer failed validation: the attempt failed, and
            a model branch is asked again with this fed back.
    """

    output: Any
    usage: Usage = field(default_factory=Usage)
    model: str | None = None
    headers: Mapping[str, str] | None = None
    rejection: OutputValidationError | None = None


class Executor(Protocol):
    """How the branch runner drives one kind of work."""

    #: A failed validation of the output is retried with the failure fed back (model calls).
    retries_rejections: bool
    #: The executor stops its own work at its timeout (an agent's process group); otherwise the
    #: branch runner abandons the call in a helper thread when the branch's ``timeout_s`` passes.
    enforces_timeout: bool

    def prepare(self, spec: Any, branch: BranchInput) -> Any:
        """The call to make, with every template filled in."""

    def estimate(self, prepared: Any) -> Usage:
        """What the call may spend at most (reserved against limits and budget before it runs)."""

    def limit_keys(self, spec: Any) -> list[str]:
        """Limit keys the call consumes besides the subtask's own ``limits``."""

    def execute(self, prepared: Any) -> Execution:
        """Make the call. Raises on failure (``TransientError``, ``RateLimitedError`` ...); an
        error that spent something says so in its ``usage`` (and ``model``, ``output``) attributes."""

    def feedback(self, prepared: Any, rejection: OutputValidationError) -> Any:
        """The original call again, with the rejected answer and the reasons fed back."""


@cache
def _registry() -> dict[str, Executor]:
    from fanflow.executors.agent import AGENT_EXECUTOR
    from fanflow.executors.model import MODEL_EXECUTOR
    from fanflow.executors.python import PYTHON_EXECUTOR

    return {"python": PYTHON_EXECUTOR, "llm": MODEL_EXECUTOR, "agent": AGENT_EXECUTOR}


def executor_for(kind: str) -> Executor:
    """The executor of a spec's ``kind``.

    Raises:
        NotImplementedError: no executor for this kind in this version (refused at submit already).
    """
    executor = _registry().get(kind)
    if executor is None:
        raise NotImplementedError(f"no executor for kind {kind!r} in this version of fanflow")
    return executor


EXECUTABLE_KINDS = frozenset({"python", "llm", "agent"})
