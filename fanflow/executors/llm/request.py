"""One model call, rendered and ready to send (``LLMRequest``), and what came back (``LLMReply``).

``build_request`` renders an ``LLMCall``'s templates and resolves its provider; ``with_feedback``
makes the request for a retry after a rejected answer; ``estimate`` is what the call may spend,
reserved against limits and budgets before it is made.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from fanflow.errors import SpecError
from fanflow.executors.llm.pricing import cost_usd
from fanflow.executors.llm.providers import Provider, provider, split_model_id
from fanflow.executors.llm.templates import render
from fanflow.result import Usage
from fanflow.spec import LLMCall, ToolSpec

__all__ = ["LLMReply", "LLMRequest", "build_request", "estimate", "with_feedback"]

#: Tokens a chat message costs beyond its text (role markers and separators), and per request.
_MESSAGE_OVERHEAD = 4
_REQUEST_OVERHEAD = 3
_CHARS_PER_TOKEN = 4


@dataclass(frozen=True, slots=True)
class LLMRequest:
    """A rendered model call.

    Attributes:
        model_id: ``provider:model`` as in the spec.
        provider: the resolved provider.
        model: the model name the provider knows.
        system: the system prompt, if any.
        messages: ``{"role": "user" | "assistant", "content": str}`` in order, system excluded.
        max_tokens: the completion limit.
        temperature: sampling temperature.
        tools: the tool manifest.
        output_schema: JSON schema the answer must match, if any.
        timeout_s: HTTP timeout of the call (None: the default).
    """

    model_id: str
    provider: Provider
    model: str
    system: str | None
    messages: tuple[dict[str, str], ...]
    max_tokens: int
    temperature: float
    tools: tuple[ToolSpec, ...] = ()
    output_schema: dict[str, Any] | None = None
    timeout_s: float | None = None


@dataclass(frozen=True, slots=True)
class LLMReply:
    """What a model call returned.

    Attributes:
        text: the answer text (with an ``output_schema`` on Anthropic: the JSON of the forced tool's input).
        tool_calls: ``{"id", "name", "arguments"}`` per tool call; arguments parsed from JSON
            (or the raw string when they are not JSON).
        usage: tokens and cost of this call (``calls=1``).
        headers: response headers, lower-case names.
        finish_reason: the provider's finish / stop reason.
        model_id: ``provider:model`` of the request.
    """

    text: str | None
    tool_calls: tuple[dict[str, Any], ...]
    usage: Usage
    headers: dict[str, str] = field(default_factory=dict)
    finish_reason: str | None = None
    model_id: str = ""


def _render(text: str, variables: Mapping[str, Any], where: str) -> str:
    try:
        return render(text, variables)
    except KeyError as exc:
        name = exc.args[0] if exc.args else "?"
        known = ", ".join(sorted(variables)) or "(none)"
        raise SpecError(
            f"{where}: unknown template variable {{{name}}}; known: {known}", field=where
        ) from None


def build_request(
    call: LLMCall, variables: Mapping[str, Any], *, timeout_s: float | None = None
) -> LLMRequest:
    """Render ``call`` with ``variables`` into a request.

    ``prompt`` becomes one user message; with ``messages``, system-role messages are joined (after
    ``system``) into the system prompt and the others kept in order.

    Raises:
        ConfigError: the model's provider is unknown.
        SpecError: a template names an unknown variable, or no user/assistant message is left.
    """
    name, model = split_model_id(call.model)
    spec = provider(name)
    system_parts: list[str] = []
    if call.system is not None:
        system_parts.append(_render(call.system, variables, "system"))
    messages: list[dict[str, str]] = []
    if call.prompt is not None:
        messages.append({"role": "user", "content": _render(call.prompt, variables, "prompt")})
    for index, message in enumerate(call.messages or ()):
        content = _render(message.content, variables, f"messages.{index}.content")
        if message.role == "system":
            system_parts.append(content)
        else:
            messages.append({"role": message.role, "content": content})
    if not messages:
        raise SpecError("messages: give at least one user or assistant message", field="messages")
    return LLMRequest(
        model_id=call.model,
        provider=spec,
        model=model,
        system="\n\n".join(system_parts) if system_parts else None,
        messages=tuple(messages),
        max_tokens=call.max_tokens,
        temperature=call.temperature,
        tools=tuple(call.tools),
        output_schema=dict(call.output_schema) if call.output_schema is not None else None,
        timeout_s=timeout_s,
    )


def with_feedback(request: LLMRequest, previous: str | None, reasons: str) -> LLMRequest:
    """The request to make after an answer was rejected.

    Call it on the *original* request every time, so the conversation never grows past one
    rejected answer: the original messages, then the rejected answer (when given and not empty)
    as an assistant message, then a user message saying why it was rejected.
    """
    extra: list[dict[str, str]] = []
    if previous:
        extra.append({"role": "assistant", "content": previous})
    ask = "Answer again, fixing that"
    if request.output_schema is not None:
        ask += "; reply with JSON that matches the required schema"
    extra.append({"role": "user", "content": f"Your previous answer was rejected: {reasons}\n{ask}."})
    return replace(request, messages=request.messages + tuple(extra))


def _chars(request: LLMRequest) -> int:
    total = len(request.system or "")
    for message in request.messages:
        total += len(message["content"])
    for tool in request.tools:
        total += len(tool.name) + len(tool.description) + len(json.dumps(tool.parameters))
    if request.output_schema is not None:
        total += len(json.dumps(request.output_schema))
    return total


def estimate(request: LLMRequest) -> Usage:
    """What the call may spend: the prompt (about 4 characters a token) plus ``max_tokens``.

    Meant to be reserved before the call and settled to the real usage after it.
    """
    input_tokens = (
        -(-_chars(request) // _CHARS_PER_TOKEN)
        + _MESSAGE_OVERHEAD * (len(request.messages) + (request.system is not None))
        + _REQUEST_OVERHEAD
        + 8 * len(request.tools)
    )
    output_tokens = request.max_tokens
    return Usage(
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        cost_usd=cost_usd(
            request.model_id,
            input_tokens=input_tokens,
            cached_tokens=0,
            cache_write_tokens=0,
            output_tokens=output_tokens,
            warn=False,
        ),
        calls=1,
    )
