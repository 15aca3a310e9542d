"""The wire formats the fake model server speaks: OpenAI chat completions and Anthropic Messages.

Pure functions, no I/O: checking a request, reading its prompt directives, counting tokens,
choosing the answer (text, JSON from a schema, or a tool call) and rendering it, or an error, in
each provider's exact shape.

Token counts are deterministic: the prompt is ``ceil(chars / 4)`` of the system text, every
message's content and the tools' JSON; the completion is ``ceil(len(answer) / 4)`` (at least 1),
capped at the request's ``max_tokens`` (the text is then cut to ``max_tokens * 4`` characters and
the finish reason is ``length`` / ``max_tokens``).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any, Literal

from fanflow.dev.fake_schema import sample

__all__ = [
    "Api",
    "Directives",
    "Reply",
    "WireError",
    "check_auth",
    "error_body",
    "last_user_text",
    "parse_directives",
    "plan_reply",
    "prompt_tokens",
    "render_reply",
    "validate_request",
]

Api = Literal["openai", "anthropic"]

_DIRECTIVE = re.compile(r"\[\[fake:([a-z_]+)(?:=(.*?))?\]\]", re.DOTALL)
_OPENAI_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
_ANTHROPIC_ROLES = frozenset({"user", "assistant"})
_MAX_LATENCY_S = 3600.0

_ANTHROPIC_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}
_DEFAULT_MESSAGES = {
    400: "invalid request",
    401: "invalid API key",
    403: "permission denied",
    404: "not found",
    408: "request timed out",
    409: "conflict",
    413: "request too large",
    422: "unprocessable request",
    429: "rate limit reached, please retry after a short wait",
    500: "the server had an error while processing the request",
    502: "bad gateway",
    503: "the engine is currently overloaded, please try again later",
    529: "overloaded",
}


class WireError(Exception):
    """A request the fake server answers with an error, in the provider's shape.

    Args:
        status: HTTP status.
        message: the error's message (a default per status when empty).
        retry_after_s: sent as ``retry-after`` (and ``retry-after-ms`` for OpenAI) when given.
    """

    def __init__(self, status: int, message: str = "", *, retry_after_s: float | None = None) -> None:
        self.status = status
        self.message = message or _DEFAULT_MESSAGES.get(status, f"error {status}")
        self.retry_after_s = retry_after_s
        super().__init__(f"{status}: {self.message}")


def error_body(api: Api, status: int, message: str) -> dict[str, Any]:
    """The provider's error object for ``status``.

    OpenAI: ``{"error": {"message", "type", "param", "code"}}``; Anthropic:
    ``{"type": "error", "error": {"type", "message"}}`` (``rate_limit_error`` for 429,
    ``overloaded_error`` for 529, ``api_error`` for other 5xx).
    """
    if api == "anthropic":
        default = "api_error" if status >= 500 else "invalid_request_error"
        kind = _ANTHROPIC_ERROR_TYPES.get(status, default)
        return {"type": "error", "error": {"type": kind, "message": message}}
    code: str | None = None
    if status == 429:
        kind, code = "requests", "rate_limit_exceeded"
    elif status == 401:
        kind, code = "invalid_request_error", "invalid_api_key"
    elif status >= 500:
        kind = "server_error"
    else:
        kind = "invalid_request_error"
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


def check_auth(api: Api, headers: dict[str, str]) -> None:
    """Raise ``WireError`` unless the provider's credentials headers are present.

    OpenAI needs ``Authorization: Bearer <anything>``; Anthropic ``x-api-key`` (401 without) and
    ``anthropic-version`` (400 without). The key's value is never checked nor echoed.
    """
    if api == "openai":
        scheme, _, key = headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise WireError(401, "You didn't provide an API key: send 'Authorization: Bearer <key>'.")
        return
    if not headers.get("x-api-key", "").strip():
        raise WireError(401, "x-api-key header is required")
    if not headers.get("anthropic-version", "").strip():
        raise WireError(400, "anthropic-version: header is required")


def _check_messages(api: Api, messages: Any) -> None:
    if not isinstance(messages, list) or not messages:
        raise WireError(400, "messages: a non-empty list is required")
    roles = _OPENAI_ROLES if api == "openai" else _ANTHROPIC_ROLES
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise WireError(400, f"messages.{i}: must be an object")
        role = message.get("role")
        if role not in roles:
            hint = " (use the top-level system parameter)" if role == "system" else ""
            raise WireError(400, f"messages.{i}.role: unexpected role {role!r}{hint}")
        content = message.get("content")
        if content is None and not (api == "openai" and role == "assistant"):
            raise WireError(400, f"messages.{i}.content: field required")


def validate_request(api: Api, body: Any) -> None:
    """Raise ``WireError(400)`` where a real provider would refuse the request's shape."""
    if not isinstance(body, dict):
        raise WireError(400, "the request body must be a JSON object")
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise WireError(400, "model: field required")
    _check_messages(api, body.get("messages"))
    if body.get("stream"):
        raise WireError(400, "stream: streaming is not supported by the fake model server")
    limit = max_tokens(api, body)
    if api == "anthropic" and "max_tokens" not in body:
        raise WireError(400, "max_tokens: field required")
    if limit is not None and limit < 1:
        raise WireError(400, "max_tokens: must be a positive integer")
    tools = body.get("tools", [])
    if not isinstance(tools, list):
        raise WireError(400, "tools: must be a list")
    declared = tool_schemas(api, body)
    forced = forced_tool(api, body)
    if forced is not None and forced not in declared:
        raise WireError(400, f"tool_choice: tool {forced!r} is not in tools")


def max_tokens(api: Api, body: dict[str, Any]) -> int | None:
    """The request's completion cap (OpenAI ``max_completion_tokens`` or ``max_tokens``)."""
    keys = ("max_completion_tokens", "max_tokens") if api == "openai" else ("max_tokens",)
    for key in keys:
        value = body.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int):
            raise WireError(400, f"{key}: must be a positive integer")
        return value
    return None


def tool_schemas(api: Api, body: dict[str, Any]) -> dict[str, Any]:
    """Declared tools: name -> its parameters / input schema."""
    out: dict[str, Any] = {}
    for i, tool in enumerate(body.get("tools") or []):
        spec = tool.get("function") if api == "openai" and isinstance(tool, dict) else tool
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
            raise WireError(400, f"tools.{i}: a tool needs a name")
        schema = spec.get("parameters" if api == "openai" else "input_schema", {})
        out[spec["name"]] = schema if isinstance(schema, dict) else {}
    return out


def forced_tool(api: Api, body: dict[str, Any]) -> str | None:
    """The tool ``tool_choice`` forces, if any (``required`` / ``any``: the first declared one)."""
    choice = body.get("tool_choice")
    tools = body.get("tools") or []
    if api == "openai":
        if isinstance(choice, dict) and choice.get("type") == "function":
            name = (choice.get("function") or {}).get("name")
            return name if isinstance(name, str) else None
        if choice == "required" and tools:
            return next(iter(tool_schemas(api, body)))
        return None
    if isinstance(choice, dict):
        if choice.get("type") == "tool":
            name = choice.get("name")
            return name if isinstance(name, str) else None
        if choice.get("type") == "any" and tools:
            return next(iter(tool_schemas(api, body)))
    return None


def _content_text(content: Any) -> str:
    """The text of a message content: a string, or the ``text`` blocks / parts of a list."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [
            block["text"]
            for block in content
            if isinstance(block, dict) and block.get("type") == "text" and isinstance(block.get("text"), str)
        ]
        return "\n".join(parts)
    return ""


def last_user_text(body: dict[str, Any]) -> str:
    """The text of the last ``user`` message ("" when there is none)."""
    for message in reversed(body.get("messages") or []):
        if isinstance(message, dict) and message.get("role") == "user":
            return _content_text(message.get("content"))
    return ""


def _chars(value: Any) -> int:
    if value is None:
        return 0
    if isinstance(value, str):
        return len(value)
    if isinstance(value, list):
        return sum(_chars(block) for block in value)
    if isinstance(value, dict) and value.get("type") == "text" and isinstance(value.get("text"), str):
        return len(value["text"])
    return len(json.dumps(value, separators=(",", ":"), ensure_ascii=False))


def prompt_tokens(body: dict[str, Any]) -> int:
    """``ceil(chars / 4)`` of the system text, every message's content (and tool calls) and the tools."""
    chars = _chars(body.get("system"))
    for message in body.get("messages") or []:
        chars += _chars(message.get("content"))
        if message.get("tool_calls"):
            chars += _chars(message["tool_calls"])
    if body.get("tools"):
        chars += _chars(body["tools"])
    return math.ceil(chars / 4)


@dataclass(frozen=True, slots=True)
class Directives:
    """What ``[[fake:...]]`` directives in the last user message ask for."""

    latency_s: float | None = None
    reply: str | None = None
    json_text: str | None = None
    tool: str | None = None
    status: int | None = None
    malformed: bool = False
    cached: int | None = None


def _number(name: str, value: str | None, low: float, high: float) -> float:
    try:
        number = float(value or "")
    except ValueError:
        number = math.nan
    if not low <= number <= high:
        raise WireError(400, f"[[fake:{name}=...]] needs a number from {low:g} to {high:g}, not {value!r}")
    return number


def parse_directives(text: str) -> Directives:
    """Read every ``[[fake:name=value]]`` in ``text``; a later one of the same name wins.

    Raises:
        WireError: 400 for an unknown directive or a bad value.
    """
    found: dict[str, Any] = {}
    for match in _DIRECTIVE.finditer(text):
        name, value = match.group(1), match.group(2)
        if name == "latency":
            found["latency_s"] = _number(name, value, 0.0, _MAX_LATENCY_S)
        elif name == "status":
            found["status"] = int(_number(name, value, 400, 599))
        elif name == "cached":
            found["cached"] = int(_number(name, value, 0, 10**9))
        elif name == "reply":
            found["reply"] = value or ""
        elif name == "json":
            try:
                json.loads(value or "")
            except ValueError:
                raise WireError(400, f"[[fake:json=...]] is not JSON: {value!r}") from None
            found["json_text"] = value
        elif name == "tool" and value:
            found["tool"] = value.strip()
        elif name == "malformed" and value is None:
            found["malformed"] = True
        else:
            raise WireError(400, f"unknown or incomplete fake directive [[fake:{name}]]")
    return Directives(**found)


def strip_directives(text: str) -> str:
    """``text`` without its directives."""
    return _DIRECTIVE.sub("", text)


@dataclass(frozen=True, slots=True)
class Reply:
    """The answer chosen for a request: a text, or tool calls ``(name, arguments)``."""

    text: str | None
    tool_calls: tuple[tuple[str, Any], ...] = field(default=())


def _response_schema(api: Api, body: dict[str, Any]) -> tuple[bool, Any]:
    """Whether a JSON answer is asked for, and its schema (None: any JSON object)."""
    fmt = body.get("response_format") if api == "openai" else body.get("output_format")
    if not isinstance(fmt, dict):
        return False, None
    if fmt.get("type") == "json_object":
        return True, None
    if fmt.get("type") == "json_schema":
        holder = fmt.get("json_schema") if api == "openai" else fmt
        schema = holder.get("schema") if isinstance(holder, dict) else None
        return True, schema if isinstance(schema, dict) else {"type": "object"}
    return False, None


def _json_object(text: str) -> dict[str, Any] | None:
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def default_text(body: dict[str, Any]) -> str:
    """``[model] answer about: <first 60 chars of the last user message, directives removed>``."""
    topic = strip_directives(last_user_text(body)).strip()[:60]
    return f"[{body.get('model')}] answer about: {topic}"


def plan_reply(api: Api, body: dict[str, Any], tool: str | None, override: str | None) -> Reply:
    """Choose the answer.

    A tool asked for (``tool`` directive, or forced by ``tool_choice``) is called with arguments
    generated from its schema, or with ``override`` when that is a JSON object (any other
    ``override`` is answered as plain text). Otherwise ``override`` is the text; else JSON from
    ``response_format``'s schema when asked; else the default text.

    Raises:
        WireError: 400 when the tool is not declared in the request.
    """
    name = tool or forced_tool(api, body)
    if name is not None:
        schemas = tool_schemas(api, body)
        if name not in schemas:
            raise WireError(400, f"tool {name!r} is not declared in the request's tools")
        if override is None:
            return Reply(None, ((name, sample(schemas[name])),))
        arguments = _json_object(override)
        return Reply(None, ((name, arguments),)) if arguments is not None else Reply(override)
    if override is not None:
        return Reply(override)
    wanted, schema = _response_schema(api, body)
    if wanted:
        value = sample(schema) if schema is not None else {"answer": default_text(body)}
        return Reply(json.dumps(value, ensure_ascii=False))
    return Reply(default_text(body))


def _completion(api: Api, body: dict[str, Any], reply: Reply) -> tuple[str | None, list[str], int, bool]:
    """(text, arguments as JSON text per call, completion tokens, cut at max_tokens)."""
    limit = max_tokens(api, body)
    args = [json.dumps(arguments, ensure_ascii=False) for _, arguments in reply.tool_calls]
    text = reply.text
    names = [name for name, _ in reply.tool_calls]
    chars = len(text or "") + sum(map(len, names)) + sum(map(len, args))
    tokens = max(1, math.ceil(chars / 4))
    cut = False
    if limit is not None and tokens > limit:
        tokens = limit
        if text is not None and not reply.tool_calls:
            text, cut = text[: limit * 4], True
    return text, args, tokens, cut


def render_reply(
    api: Api, body: dict[str, Any], reply: Reply, *, prompt: int, cached: int, seq: int, created: int
) -> tuple[dict[str, Any], int]:
    """The provider's response object for ``reply``, and its completion tokens.

    ``cached`` prompt tokens (capped at ``prompt``) are reported as OpenAI does (inside
    ``prompt_tokens``, in ``prompt_tokens_details.cached_tokens``) or as Anthropic does
    (``cache_read_input_tokens``, not part of ``input_tokens``).
    """
    text, args, completion, cut = _completion(api, body, reply)
    cached = min(max(cached, 0), prompt)
    if api == "anthropic":
        return _anthropic_message(body, reply, text, cut, prompt, completion, cached, seq), completion
    answer: dict[str, Any] = {"role": "assistant", "content": text, "refusal": None}
    if reply.tool_calls:
        answer["tool_calls"] = [
            {"id": f"call_fake{seq:08d}_{i}", "type": "function", "function": {"name": name, "arguments": a}}
            for i, ((name, _), a) in enumerate(zip(reply.tool_calls, args, strict=True))
        ]
    finish = "tool_calls" if reply.tool_calls else "length" if cut else "stop"
    usage = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached},
        "completion_tokens_details": {"reasoning_tokens": 0},
    }
    choice = {"index": 0, "message": answer, "logprobs": None, "finish_reason": finish}
    response: dict[str, Any] = {"id": f"chatcmpl-fake{seq:08d}", "object": "chat.completion"}
    response.update(created=created, model=body["model"], choices=[choice], usage=usage)
    return response, completion


def _anthropic_message(
    body: dict[str, Any],
    reply: Reply,
    text: str | None,
    cut: bool,
    prompt: int,
    completion: int,
    cached: int,
    seq: int,
) -> dict[str, Any]:
    content: list[dict[str, Any]] = [{"type": "text", "text": text}] if text is not None else []
    content += [
        {"type": "tool_use", "id": f"toolu_fake{seq:08d}_{i}", "name": name, "input": arguments}
        for i, (name, arguments) in enumerate(reply.tool_calls)
    ]
    stop = "tool_use" if reply.tool_calls else "max_tokens" if cut else "end_turn"
    usage = {
        "input_tokens": prompt - cached,
        "output_tokens": completion,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": cached,
    }
    message: dict[str, Any] = {"id": f"msg_fake{seq:08d}", "type": "message", "role": "assistant"}
    message.update(content=content, model=body["model"], stop_reason=stop, stop_sequence=None, usage=usage)
    return message
