"""Anthropic Messages API.

``POST {base}/v1/messages`` with ``x-api-key`` and ``anthropic-version``; ``base`` is the host root
(as ``ANTHROPIC_BASE_URL`` is for the official SDK). An ``output_schema`` becomes a forced tool
``structured_output`` whose input is the answer (a schema that is not an object is wrapped as the
property ``output`` of one, since tool inputs are objects).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from fanflow.errors import ExecutorError
from fanflow.executors.llm.http import http_error, malformed
from fanflow.executors.llm.pricing import count, priced_usage
from fanflow.executors.llm.request import LLMReply, LLMRequest
from fanflow.result import Usage
from fanflow.spec import ToolSpec

__all__ = [
    "API_VERSION",
    "PATH",
    "STRUCTURED_OUTPUT_TOOL",
    "build_body",
    "endpoint",
    "error_details",
    "error_from",
    "parse_response",
    "parse_usage",
    "request_headers",
    "tool_entry",
]

PATH = "/v1/messages"
API_VERSION = "2023-06-01"
STRUCTURED_OUTPUT_TOOL = "structured_output"
_EMPTY_SCHEMA: dict[str, Any] = {"type": "object", "properties": {}}
#: The Messages API takes temperatures in [0, 1]; the spec allows up to 2.
_MAX_TEMPERATURE = 1.0


def endpoint(base_url: str) -> str:
    """The URL calls are posted to (a base that already ends in ``/v1`` is accepted too)."""
    if base_url.endswith("/v1"):
        base_url = base_url[:-3]
    return base_url + PATH


def request_headers(api_key: str | None) -> dict[str, str]:
    """Authentication and version headers."""
    headers = {"anthropic-version": API_VERSION}
    if api_key:
        headers["x-api-key"] = api_key
    return headers


def tool_entry(tool: ToolSpec) -> dict[str, Any]:
    """One tool as the Messages API declares it."""
    return {
        "name": tool.name,
        "description": tool.description,
        "input_schema": tool.parameters or _EMPTY_SCHEMA,
    }


def _wraps(schema: Mapping[str, Any]) -> bool:
    """Tool inputs are objects: a schema of anything else is wrapped as ``{"output": ...}``."""
    return schema.get("type") != "object"


def build_body(request: LLMRequest) -> dict[str, Any]:
    """The JSON body of a Messages call."""
    body: dict[str, Any] = {
        "model": request.model,
        "max_tokens": request.max_tokens,
        "messages": list(request.messages),
        "temperature": min(request.temperature, _MAX_TEMPERATURE),
    }
    if request.system is not None:
        body["system"] = request.system
    tools = [tool_entry(tool) for tool in request.tools]
    schema = request.output_schema
    if schema is not None:
        if _wraps(schema):
            schema = {"type": "object", "properties": {"output": schema}, "required": ["output"]}
        tools.append(
            {
                "name": STRUCTURED_OUTPUT_TOOL,
                "description": "Give your answer by calling this tool with it.",
                "input_schema": schema,
            }
        )
        body["tool_choice"] = {"type": "tool", "name": STRUCTURED_OUTPUT_TOOL}
    if tools:
        body["tools"] = tools
    return body


def parse_usage(model_id: str, usage: Any) -> Usage:
    """Usage of a call. Anthropic's ``input_tokens`` excludes cache reads and writes: add them."""
    if not isinstance(usage, dict):
        return Usage(calls=1)
    cached = count(usage.get("cache_read_input_tokens"))
    written = count(usage.get("cache_creation_input_tokens"))
    input_tokens = count(usage.get("input_tokens")) + cached + written
    return priced_usage(model_id, input_tokens=input_tokens, cached_tokens=cached, cache_write_tokens=written,
                        output_tokens=count(usage.get("output_tokens")))  # fmt: skip


def parse_response(
    request: LLMRequest, data: Any, headers: Mapping[str, str], *, status: int = 200
) -> LLMReply:
    """The reply of a 2xx answer.

    Raises:
        TransientError: the body is not a message.
    """
    name = request.provider.name
    texts: list[str] = []
    tool_calls: list[dict[str, Any]] = []
    structured: str | None = None
    try:
        content = data["content"]
        if not isinstance(content, list):
            raise TypeError
        for block in content:
            kind = block.get("type")
            if kind == "text":
                texts.append(block["text"])
            elif kind == "tool_use":
                if request.output_schema is not None and block["name"] == STRUCTURED_OUTPUT_TOOL:
                    answer = block.get("input")
                    if _wraps(request.output_schema) and isinstance(answer, dict) and "output" in answer:
                        answer = answer["output"]
                    structured = json.dumps(answer, ensure_ascii=False)
                else:
                    tool_calls.append(
                        {"id": block.get("id") or "", "name": block["name"], "arguments": block.get("input")}
                    )
        stop_reason = data.get("stop_reason")
    except (KeyError, TypeError, AttributeError):
        raise malformed(name, status, "not a message") from None
    if not all(isinstance(text, str) for text in texts):
        raise malformed(name, status, "text block is not a string")
    text = structured if structured is not None else ("".join(texts) if texts else None)
    return LLMReply(
        text=text,
        tool_calls=tuple(tool_calls),
        usage=parse_usage(request.model_id, data.get("usage")),
        headers=dict(headers),
        finish_reason=stop_reason if isinstance(stop_reason, str) else None,
        model_id=request.model_id,
    )


def error_details(data: Any) -> tuple[str | None, str | None]:
    """``(type, message)`` of an error body ``{"type": "error", "error": {"type", "message"}}``."""
    if not isinstance(data, dict):
        return None, None
    error = data.get("error")
    if isinstance(error, dict):
        kind, message = error.get("type"), error.get("message")
        return (str(kind) if kind else None), (str(message) if message is not None else None)
    if isinstance(error, str):
        return None, error
    message = data.get("message")
    return None, (message if isinstance(message, str) else None)


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
    overloaded = kind == "overloaded_error"
    return http_error(provider_name, status, kind, message, headers, overloaded=overloaded, secret=secret)
