"""OpenAI chat completions (and the servers that speak it: Ollama, vLLM, OpenRouter ...).

``POST {base}/chat/completions`` with ``Authorization: Bearer KEY``; ``base`` includes ``/v1``.
Plain dicts in, plain dicts out: no SDK models on the hot path.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from fanflow.errors import ExecutorError
from fanflow.executors.llm.http import http_error, malformed
from fanflow.executors.llm.pricing import count, priced_usage
from fanflow.executors.llm.request import LLMReply, LLMRequest
from fanflow.result import Usage
from fanflow.spec import ToolSpec

__all__ = [
    "PATH",
    "build_body",
    "endpoint",
    "error_details",
    "error_from",
    "parse_response",
    "parse_usage",
    "request_headers",
    "tool_entry",
]

PATH = "/chat/completions"

#: OpenAI's reasoning models refuse ``max_tokens`` and any temperature but the default.
_REASONING_MODEL = re.compile(r"^(?:o\d|gpt-5)")
_EMPTY_PARAMETERS: dict[str, Any] = {"type": "object", "properties": {}}


def endpoint(base_url: str) -> str:
    """The URL calls are posted to."""
    return base_url + PATH


def request_headers(api_key: str | None) -> dict[str, str]:
    """Authentication headers (none without a key)."""
    return {"authorization": f"Bearer {api_key}"} if api_key else {}


def tool_entry(tool: ToolSpec) -> dict[str, Any]:
    """One tool as chat completions declares it."""
    return {
        "type": "function",
        "function": {
            "name": tool.name,
            "description": tool.description,
            "parameters": tool.parameters or _EMPTY_PARAMETERS,
        },
    }


def build_body(request: LLMRequest) -> dict[str, Any]:
    """The JSON body of a chat completions call."""
    messages: list[dict[str, str]] = []
    if request.system is not None:
        messages.append({"role": "system", "content": request.system})
    messages.extend(request.messages)
    body: dict[str, Any] = {"model": request.model, "messages": messages}
    if request.provider.name == "openai" and _REASONING_MODEL.match(request.model):
        body["max_completion_tokens"] = request.max_tokens
    else:
        body["max_tokens"] = request.max_tokens
        body["temperature"] = request.temperature
    if request.tools:
        body["tools"] = [tool_entry(tool) for tool in request.tools]
    if request.output_schema is not None:
        body["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": "output", "schema": request.output_schema, "strict": False},
        }
    return body


def _arguments(raw: Any) -> Any:
    if not isinstance(raw, str):
        return raw if raw is not None else {}
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def parse_usage(model_id: str, usage: Any) -> Usage:
    """Usage of a call from its ``usage`` object (``prompt_tokens`` already includes cached ones)."""
    if not isinstance(usage, dict):
        return Usage(calls=1)
    input_tokens = count(usage.get("prompt_tokens"))
    details = usage.get("prompt_tokens_details")
    cached = min(count(details.get("cached_tokens")), input_tokens) if isinstance(details, dict) else 0
    return priced_usage(model_id, input_tokens=input_tokens, cached_tokens=cached, cache_write_tokens=0,
                        output_tokens=count(usage.get("completion_tokens")))  # fmt: skip


def parse_response(
    request: LLMRequest, data: Any, headers: Mapping[str, str], *, status: int = 200
) -> LLMReply:
    """The reply of a 2xx answer.

    Raises:
        TransientError: the body is not a chat completion.
    """
    name = request.provider.name
    try:
        choice = data["choices"][0]
        message = choice["message"]
        text = message.get("content")
        if text is None and isinstance(message.get("refusal"), str):
            text = message["refusal"]  # structured outputs: the model declined, say so
        raw_calls = message.get("tool_calls") or ()
        tool_calls = tuple(
            {
                "id": call.get("id") or "",
                "name": call["function"]["name"],
                "arguments": _arguments(call["function"].get("arguments")),
            }
            for call in raw_calls
        )
        finish_reason = choice.get("finish_reason")
    except (KeyError, IndexError, TypeError, AttributeError):
        raise malformed(name, status, "not a chat completion") from None
    if text is not None and not isinstance(text, str):
        raise malformed(name, status, "message content is not a string")
    return LLMReply(
        text=text,
        tool_calls=tool_calls,
        usage=parse_usage(request.model_id, data.get("usage")),
        headers=dict(headers),
        finish_reason=finish_reason if isinstance(finish_reason, str) else None,
        model_id=request.model_id,
    )


def error_details(data: Any) -> tuple[str | None, str | None]:
    """``(type, message)`` of an error body.

    Accepts ``{"error": {"type", "message"}}`` (OpenAI, vLLM), ``{"error": "..."}`` (Ollama) and
    ``{"detail": ...}`` (other servers).
    """
    if not isinstance(data, dict):
        return None, None
    error = data.get("error")
    if isinstance(error, dict):
        kind = error.get("type") or error.get("code")
        message = error.get("message")
        return (str(kind) if kind else None), (str(message) if message is not None else None)
    if isinstance(error, str):
        return None, error
    detail = data.get("detail") or data.get("message")
    return None, (detail if isinstance(detail, str) else json.dumps(detail) if detail else None)


def error_from(
    provider_name: str,
    status: int,
    data: Any,
    headers: Mapping[str, str],
    *,
    secret: str | None = None,
) -> ExecutorError:
    """The exception for a non-2xx answer (``data``: the parsed body, or None when not JSON)."""
    kind, message = error_details(data)
    overloaded = status == 503 and "overload" in f"{kind or ''} {message or ''}".lower()
    return http_error(provider_name, status, kind, message, headers, overloaded=overloaded, secret=secret)
