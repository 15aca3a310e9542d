"""The ``llm`` executor: one model call per attempt, through ``fanflow.executors.llm``.

It renders the call's templates, estimates its tokens and cost (the prompt's size plus
``max_tokens``), consumes its model's limit key (``openai:gpt-4o-mini``) besides the subtask's own,
and parses the answer: with an ``output_schema`` the validated JSON, with tool calls an object with
``content`` and ``tool_calls``, otherwise the text. An answer that fails its schema comes back as
a rejection, and the next attempt carries the original request plus that answer and the reasons.
"""

from __future__ import annotations

from typing import Any

from fanflow.errors import OutputValidationError
from fanflow.executors import BranchInput, Execution
from fanflow.executors.llm import (
    LLMRequest,
    build_request,
    call_model,
    cost_usd,
    estimate,
    parse_output,
    with_feedback,
)
from fanflow.result import Usage
from fanflow.spec import LLMCall

__all__ = ["MODEL_EXECUTOR", "ModelExecutor"]


class ModelExecutor:
    """Runs an ``LLMCall``."""

    retries_rejections = True
    enforces_timeout = False

    def prepare(self, spec: LLMCall, branch: BranchInput) -> LLMRequest:
        """The provider-neutral request, every template filled from the branch's variables."""
        return build_request(spec, branch.variables(), timeout_s=branch.timeout_s)

    def estimate(self, prepared: LLMRequest) -> Usage:
        """The prompt's estimated tokens plus ``max_tokens``, priced as if all were spent."""
        usage = estimate(prepared)
        cost = cost_usd(
            prepared.model_id, input_tokens=usage.input_tokens, cached_tokens=0, cache_write_tokens=0,
            output_tokens=usage.output_tokens, warn=False,
        )  # fmt: skip
        return usage.model_copy(update={"cost_usd": cost})

    def limit_keys(self, spec: LLMCall) -> list[str]:
        """The model's own key: ``openai:gpt-4o-mini`` (a limit set on it holds for every branch)."""
        return [spec.model]

    def execute(self, prepared: LLMRequest) -> Execution:
        """One model call; an answer that fails validation is a rejection, not an exception."""
        reply = call_model(prepared)
        rejection: OutputValidationError | None = None
        output: Any = None
        try:
            output = parse_output(prepared, reply)
        except OutputValidationError as exc:
            rejection = exc
        return Execution(
            output=output, usage=reply.usage, model=prepared.model_id, headers=reply.headers,
            rejection=rejection,
        )  # fmt: skip

    def feedback(self, prepared: LLMRequest, rejection: OutputValidationError) -> LLMRequest:
        """The original request plus the rejected answer and why (never the whole history)."""
        return with_feedback(prepared, rejection.raw, str(rejection))


MODEL_EXECUTOR = ModelExecutor()
