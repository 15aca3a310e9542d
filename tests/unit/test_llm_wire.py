"""The wire side of model calls, without a network: bodies, replies, errors, prices, outputs."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import httpx
import pytest

from fanflow.errors import (
    ConfigError,
    OutputValidationError,
    ProviderError,
    RateLimitedError,
    SpecError,
    TransientError,
)
from fanflow.executors.llm import (
    LLMReply,
    LLMRequest,
    anthropic_wire,
    build_request,
    call_model,
    close_clients,
    configure,
    cost_usd,
    http,
    openai_wire,
    parse_output,
)
from fanflow.executors.llm import call as call_module
from fanflow.executors.llm.call import read_response
from fanflow.executors.llm.pricing import price_of
from fanflow.result import Usage
from fanflow.spec import LLMCall, ToolSpec

SECRET = "sk-test-0123456789abcdef"
SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "n": {"type": "integer"}},
    "required": ["name"],
}
TOOL = ToolSpec(
    name="lookup",
    description="Look a word up",
    parameters={"type": "object", "properties": {"word": {"type": "string"}}},
)


@pytest.fixture(autouse=True)
def _clean_configuration() -> Iterator[None]:
    configure()
    yield
    configure()
    close_clients()


def _request(model: str = "openai:gpt-4o-mini", **fields: Any) -> LLMRequest:
    call = LLMCall(model=model, **({"prompt": "hello", "system": "be brief"} | fields))
    return build_request(call, {})


# --- request bodies -------------------------------------------------------------------------------


def test_openai_body() -> None:
    request = _request(tools=[TOOL], output_schema=SCHEMA, max_tokens=77, temperature=0.2)
    body = openai_wire.build_body(request)
    assert body == {
        "model": "gpt-4o-mini",
        "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello"}],
        "max_tokens": 77,
        "temperature": 0.2,
        "tools": [
            {
                "type": "function",
                "function": {
                    "name": "lookup",
                    "description": "Look a word up",
                    "parameters": {"type": "object", "properties": {"word": {"type": "string"}}},
                },
            }
        ],
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "output", "schema": SCHEMA, "strict": False},
        },
    }
    json.dumps(body)  # plain JSON, nothing else


def test_openai_body_minimal() -> None:
    body = openai_wire.build_body(_request(system=None, tools=[ToolSpec(name="noargs")]))
    assert body["messages"] == [{"role": "user", "content": "hello"}]
    assert "response_format" not in body
    assert body["tools"][0]["function"]["parameters"] == {"type": "object", "properties": {}}


@pytest.mark.parametrize("model", ["o3", "o4-mini", "gpt-5-mini", "gpt-5"])
def test_openai_reasoning_models_get_max_completion_tokens(model: str) -> None:
    body = openai_wire.build_body(_request(f"openai:{model}", max_tokens=99))
    assert body["max_completion_tokens"] == 99
    assert "max_tokens" not in body and "temperature" not in body


def test_compatible_servers_get_max_tokens_for_any_model_name() -> None:
    body = openai_wire.build_body(_request("ollama:gpt-5-local", max_tokens=99))
    assert body["max_tokens"] == 99


def test_anthropic_body() -> None:
    request = _request("anthropic:claude-haiku-4-5", tools=[TOOL], max_tokens=64, temperature=1.7)
    body = anthropic_wire.build_body(request)
    assert body == {
        "model": "claude-haiku-4-5",
        "max_tokens": 64,
        "messages": [{"role": "user", "content": "hello"}],
        "temperature": 1.0,  # the Messages API takes [0, 1]
        "system": "be brief",
        "tools": [
            {
                "name": "lookup",
                "description": "Look a word up",
                "input_schema": {"type": "object", "properties": {"word": {"type": "string"}}},
            }
        ],
    }


def test_anthropic_structured_output_is_a_forced_tool() -> None:
    body = anthropic_wire.build_body(_request("anthropic:claude-haiku-4-5", output_schema=SCHEMA))
    assert body["tools"] == [
        {"name": "structured_output", "description": body["tools"][0]["description"], "input_schema": SCHEMA}
    ]
    assert body["tool_choice"] == {"type": "tool", "name": "structured_output"}


def test_anthropic_structured_output_wraps_a_non_object_schema() -> None:
    schema = {"type": "array", "items": {"type": "string"}}
    request = _request("anthropic:claude-haiku-4-5", output_schema=schema)
    body = anthropic_wire.build_body(request)
    wrapped = body["tools"][0]["input_schema"]
    assert wrapped == {"type": "object", "properties": {"output": schema}, "required": ["output"]}
    data = {
        "content": [{"type": "tool_use", "id": "t", "name": "structured_output", "input": {"output": ["a"]}}]
    }
    reply = anthropic_wire.parse_response(request, data, {})
    assert parse_output(request, reply) == ["a"]


def test_endpoints_and_auth_headers() -> None:
    assert openai_wire.endpoint("http://127.0.0.1:8089/v1") == "http://127.0.0.1:8089/v1/chat/completions"
    assert anthropic_wire.endpoint("http://127.0.0.1:8089") == "http://127.0.0.1:8089/v1/messages"
    assert anthropic_wire.endpoint("http://127.0.0.1:8089/v1") == "http://127.0.0.1:8089/v1/messages"
    assert openai_wire.request_headers("k") == {"authorization": "Bearer k"}
    assert openai_wire.request_headers(None) == {}
    assert anthropic_wire.request_headers("k") == {"anthropic-version": "2023-06-01", "x-api-key": "k"}


# --- parsing replies ------------------------------------------------------------------------------


def _openai_data(**message: Any) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": "gpt-4o-mini",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "hi"} | message, "finish_reason": "stop"}
        ],
        "usage": {
            "prompt_tokens": 1000,
            "completion_tokens": 200,
            "total_tokens": 1200,
            "prompt_tokens_details": {"cached_tokens": 400},
        },
    }


def test_openai_reply_usage_counts_cached_tokens_once() -> None:
    request = _request()
    reply = openai_wire.parse_response(request, _openai_data(), {"x-ratelimit-remaining-requests": "9"})
    assert reply.text == "hi" and reply.tool_calls == () and reply.finish_reason == "stop"
    assert reply.model_id == "openai:gpt-4o-mini"
    assert reply.headers == {"x-ratelimit-remaining-requests": "9"}
    usage = reply.usage
    assert (usage.input_tokens, usage.cached_tokens, usage.output_tokens, usage.calls) == (1000, 400, 200, 1)
    # 600 uncached at 0.15, 400 cached at 0.075, 200 out at 0.60 (per million)
    assert usage.cost_usd == pytest.approx((600 * 0.15 + 400 * 0.075 + 200 * 0.60) / 1e6)


def test_openai_reply_tool_calls() -> None:
    calls = [
        {"id": "c1", "type": "function", "function": {"name": "lookup", "arguments": '{"word": "x"}'}},
        {"id": "c2", "type": "function", "function": {"name": "lookup", "arguments": "not json"}},
    ]
    request = _request(tools=[TOOL])
    reply = openai_wire.parse_response(request, _openai_data(content=None, tool_calls=calls), {})
    assert reply.text is None
    assert reply.tool_calls == (
        {"id": "c1", "name": "lookup", "arguments": {"word": "x"}},
        {"id": "c2", "name": "lookup", "arguments": "not json"},
    )
    assert parse_output(request, reply) == {"content": None, "tool_calls": list(reply.tool_calls)}


def test_openai_refusal_is_the_text() -> None:
    request = _request(output_schema=SCHEMA)
    data = _openai_data(content=None, refusal="I can't help with that.")
    reply = openai_wire.parse_response(request, data, {})
    assert reply.text == "I can't help with that."
    with pytest.raises(OutputValidationError, match="not JSON") as info:
        parse_output(request, reply)
    assert info.value.raw == "I can't help with that."


def test_openai_reply_without_usage_still_counts_the_call() -> None:
    data = _openai_data()
    del data["usage"]
    assert openai_wire.parse_response(_request(), data, {}).usage == Usage(calls=1)


@pytest.mark.parametrize(
    "data",
    [
        {},
        {"choices": []},
        {"choices": [{}]},
        {"choices": [{"message": {"content": 5}}]},
        {"error": {"message": "oops"}},
        [],
        "text",
    ],
)
def test_openai_malformed_reply_is_transient(data: Any) -> None:
    with pytest.raises(TransientError, match="malformed response"):
        openai_wire.parse_response(_request(), data, {})


def _anthropic_data(*blocks: dict[str, Any], **usage: int) -> dict[str, Any]:
    return {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-5",
        "content": list(blocks) or [{"type": "text", "text": "hi"}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": 100, "output_tokens": 50} | usage,
    }


def test_anthropic_reply_usage_adds_cache_reads_and_writes() -> None:
    request = _request("anthropic:claude-sonnet-4-5-20250929")
    data = _anthropic_data(cache_read_input_tokens=800, cache_creation_input_tokens=100)
    reply = anthropic_wire.parse_response(request, data, {})
    assert reply.text == "hi" and reply.finish_reason == "end_turn"
    usage = reply.usage
    assert (usage.input_tokens, usage.cached_tokens, usage.output_tokens) == (1000, 800, 50)
    # sonnet 4.5: 3 in / 15 out; reads 0.1 x input, writes 1.25 x input
    expected = (100 * 3.0 + 800 * 0.3 + 100 * 3.75 + 50 * 15.0) / 1e6
    assert usage.cost_usd == pytest.approx(expected)


def test_anthropic_reply_with_null_cache_fields() -> None:
    data = _anthropic_data(cache_read_input_tokens=None, cache_creation_input_tokens=None)  # type: ignore[arg-type]
    usage = anthropic_wire.parse_response(_request("anthropic:claude-haiku-4-5"), data, {}).usage
    assert (usage.input_tokens, usage.cached_tokens) == (100, 0)


def test_anthropic_reply_text_blocks_and_tool_calls() -> None:
    request = _request("anthropic:claude-haiku-4-5", tools=[TOOL])
    data = _anthropic_data(
        {"type": "text", "text": "Let me look. "},
        {"type": "text", "text": "One moment."},
        {"type": "tool_use", "id": "toolu_1", "name": "lookup", "input": {"word": "x"}},
    )
    reply = anthropic_wire.parse_response(request, data, {})
    assert reply.text == "Let me look. One moment."
    assert reply.tool_calls == ({"id": "toolu_1", "name": "lookup", "arguments": {"word": "x"}},)


def test_anthropic_structured_output_becomes_the_text() -> None:
    request = _request("anthropic:claude-haiku-4-5", output_schema=SCHEMA)
    block = {"type": "tool_use", "id": "toolu_1", "name": "structured_output", "input": {"name": "é", "n": 2}}
    reply = anthropic_wire.parse_response(request, _anthropic_data(block), {})
    assert reply.tool_calls == ()
    assert reply.text == '{"name": "é", "n": 2}'
    assert parse_output(request, reply) == {"name": "é", "n": 2}


@pytest.mark.parametrize(
    "data",
    [
        {},
        {"content": "text"},
        {"content": [{"type": "text"}]},
        {"content": [{"type": "text", "text": 3}]},
        [],
    ],
)
def test_anthropic_malformed_reply_is_transient(data: Any) -> None:
    with pytest.raises(TransientError, match="malformed response"):
        anthropic_wire.parse_response(_request("anthropic:claude-haiku-4-5"), data, {})


# --- errors from synthetic responses --------------------------------------------------------------


def _response(status: int, body: Any = None, headers: dict[str, str] | None = None) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode() if body is not None else b""
    return httpx.Response(status, content=content, headers=headers or {})


def _openai_error(message: str, kind: str = "invalid_request_error") -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": None, "code": None}}


def _anthropic_error(message: str, kind: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": kind, "message": message}}


def test_openai_429_with_retry_after_ms() -> None:
    response = _response(
        429,
        _openai_error("Rate limit reached", "requests"),
        {"retry-after-ms": "1500", "retry-after": "9", "x-ratelimit-reset-requests": "20s"},
    )
    with pytest.raises(RateLimitedError) as info:
        read_response(_request(), response)
    assert info.value.retry_after_s == pytest.approx(1.5)
    assert str(info.value) == "openai: HTTP 429 requests: Rate limit reached"


def test_retry_after_seconds_then_http_date() -> None:
    assert http.retry_after_s({"retry-after": "7"}) == 7.0
    later = datetime.now(UTC) + timedelta(seconds=30)
    wait = http.retry_after_s({"retry-after": format_datetime(later, usegmt=True)})
    assert wait is not None and 25 <= wait <= 31


def test_retry_after_falls_back_to_the_exhausted_window_reset() -> None:
    headers = {
        "x-ratelimit-remaining-requests": "10",
        "x-ratelimit-reset-requests": "1s",
        "x-ratelimit-remaining-tokens": "0",
        "x-ratelimit-reset-tokens": "6m0s",
    }
    assert http.retry_after_s(headers) == pytest.approx(360.0)
    reset = (datetime.now(UTC) + timedelta(seconds=20)).isoformat().replace("+00:00", "Z")
    anthropic = {"anthropic-ratelimit-tokens-remaining": "0", "anthropic-ratelimit-tokens-reset": reset}
    wait = http.retry_after_s(anthropic)
    assert wait is not None and 15 <= wait <= 21
    assert http.retry_after_s({}) is None


def test_anthropic_429_and_overloaded() -> None:
    request = _request("anthropic:claude-haiku-4-5")
    with pytest.raises(RateLimitedError) as info:
        read_response(
            request, _response(429, _anthropic_error("slow down", "rate_limit_error"), {"retry-after": "3"})
        )
    assert info.value.retry_after_s == 3.0
    assert str(info.value) == "anthropic: HTTP 429 rate_limit_error: slow down"
    with pytest.raises(RateLimitedError) as overloaded:
        read_response(request, _response(529, _anthropic_error("Overloaded", "overloaded_error")))
    assert overloaded.value.retry_after_s is None
    # an overload answer under another status is still an overload
    with pytest.raises(RateLimitedError):
        read_response(request, _response(500, _anthropic_error("Overloaded", "overloaded_error")))


def test_openai_503_overloaded_is_rate_limited_other_5xx_transient() -> None:
    overloaded = _openai_error("The engine is currently overloaded, please try again later", "server_error")
    with pytest.raises(RateLimitedError):
        read_response(_request(), _response(503, overloaded))
    for status in (500, 502, 503, 504, 408, 409):
        with pytest.raises(TransientError) as info:
            read_response(_request(), _response(status, _openai_error("boom", "server_error")))
        assert not isinstance(info.value, RateLimitedError)
        assert f"HTTP {status}" in str(info.value)


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422])
def test_other_4xx_are_provider_errors(status: int) -> None:
    with pytest.raises(ProviderError) as info:
        read_response(_request(), _response(status, _openai_error("Invalid model", "invalid_request_error")))
    assert info.value.status == status
    assert str(info.value) == f"openai: HTTP {status} invalid_request_error: Invalid model"


def test_error_messages_never_hold_the_key_and_are_bounded() -> None:
    echoed = _openai_error(f"Incorrect API key provided: {SECRET}. " + "x" * 2000)
    with pytest.raises(ProviderError) as info:
        read_response(_request(), _response(401, echoed), secret=SECRET)
    assert SECRET not in str(info.value)
    assert len(str(info.value)) <= 500


def test_error_bodies_that_are_not_json() -> None:
    with pytest.raises(TransientError) as info:
        read_response(_request(), _response(502, b"<html>Bad gateway</html>"))
    assert str(info.value) == "openai: HTTP 502"
    with pytest.raises(ProviderError):
        read_response(_request(), _response(404, b"not found"))
    with pytest.raises(ProviderError, match="model 'x' not found"):  # Ollama's shape
        read_response(_request("ollama:x"), _response(404, {"error": "model 'x' not found"}))


@pytest.mark.parametrize("body", [b"", b"not json", b'{"choices": 1}'])
def test_2xx_that_is_not_the_expected_json_is_transient(body: bytes) -> None:
    with pytest.raises(TransientError, match="malformed response"):
        read_response(_request(), _response(200, body))


def test_read_response_keeps_lower_case_headers() -> None:
    response = _response(200, _openai_data(), {"X-RateLimit-Remaining-Tokens": "100"})
    reply = read_response(_request(), response)
    assert reply.headers["x-ratelimit-remaining-tokens"] == "100"


# --- call_model without a network (a mock transport in the shared client's place) -------------------


def _mock_client(monkeypatch: pytest.MonkeyPatch, base_url: str, handler: Any) -> list[httpx.Request]:
    seen: list[httpx.Request] = []

    def record(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        response: httpx.Response = handler(request)
        return response

    client = httpx.Client(transport=httpx.MockTransport(record))
    real = call_module.get_client

    def get_client(url: str) -> httpx.Client:
        return client if url == base_url else real(url)

    monkeypatch.setattr(call_module, "get_client", get_client)
    return seen


def test_call_model_openai(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", "http://fake.test/v1")
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    seen = _mock_client(
        monkeypatch, "http://fake.test/v1", lambda _: httpx.Response(200, json=_openai_data())
    )
    reply = call_model(_request())
    assert reply.text == "hi" and reply.usage.calls == 1
    (sent,) = seen
    assert str(sent.url) == "http://fake.test/v1/chat/completions"
    assert sent.headers["authorization"] == f"Bearer {SECRET}"
    assert json.loads(sent.content)["model"] == "gpt-4o-mini"


def test_call_model_anthropic(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_BASE_URL", "http://fake.test")
    monkeypatch.setenv("ANTHROPIC_API_KEY", SECRET)
    seen = _mock_client(
        monkeypatch, "http://fake.test", lambda _: httpx.Response(200, json=_anthropic_data())
    )
    reply = call_model(_request("anthropic:claude-haiku-4-5"))
    assert reply.text == "hi"
    (sent,) = seen
    assert str(sent.url) == "http://fake.test/v1/messages"
    assert sent.headers["x-api-key"] == SECRET
    assert sent.headers["anthropic-version"] == "2023-06-01"
    assert "authorization" not in sent.headers


def test_call_model_needs_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(ConfigError, match=r"^OPENAI_API_KEY is not set on this worker$"):
        call_model(_request())


@pytest.mark.parametrize("key", ["sk-é", "sk-a\nb", "sk a"])
def test_a_key_no_header_can_carry_is_a_config_error(monkeypatch: pytest.MonkeyPatch, key: str) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", key)
    with pytest.raises(ConfigError, match="OPENAI_API_KEY holds characters") as info:
        call_model(_request())
    assert key not in str(info.value)


def test_free_provider_key_is_optional(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OLLAMA_BASE_URL", "http://ollama.test/v1")
    monkeypatch.delenv("OLLAMA_API_KEY", raising=False)
    seen = _mock_client(
        monkeypatch, "http://ollama.test/v1", lambda _: httpx.Response(200, json=_openai_data())
    )
    reply = call_model(_request("ollama:llama3.2"))
    assert reply.usage.cost_usd == 0.0
    assert "authorization" not in seen[0].headers


def test_call_model_connection_errors_are_transient(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", "http://fake.test/v1")
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)

    def fail(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("Connection refused", request=request)

    _mock_client(monkeypatch, "http://fake.test/v1", fail)
    with pytest.raises(TransientError, match=r"openai \(fake.test\): ConnectError") as info:
        call_model(_request())
    assert SECRET not in str(info.value)


def test_call_model_bad_base_url_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", "localhost:8000/v1")
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    with pytest.raises(ConfigError, match="base URL"):
        call_model(_request())


def test_each_thread_has_its_own_client_per_base_url() -> None:
    first = http.get_client("http://a.test/v1")
    assert http.get_client("http://a.test/v1") is first
    assert http.get_client("http://b.test/v1") is not first
    seen: list[httpx.Client] = []
    threads = [
        threading.Thread(target=lambda: seen.append(http.get_client("http://a.test/v1"))) for _ in range(4)
    ]
    for thread in threads:
        thread.start()
        thread.join()
    assert len({id(client) for client in [first, *seen]}) == 5  # no pool shared between threads
    close_clients()
    assert http.get_client("http://a.test/v1") is not first


# --- prices ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model_id", "row"),
    [
        ("openai:gpt-4o", "openai:gpt-4o"),
        ("openai:gpt-4o-2024-08-06", "openai:gpt-4o"),
        ("openai:gpt-4o-mini", "openai:gpt-4o-mini"),
        ("openai:gpt-4o-mini-2024-07-18", "openai:gpt-4o-mini"),
        ("openai:gpt-4.1-nano-2025-04-14", "openai:gpt-4.1-nano"),
        ("anthropic:claude-sonnet-4-5-20250929", "anthropic:claude-sonnet-4-5"),
        ("anthropic:claude-sonnet-4-20250514", "anthropic:claude-sonnet-4"),
        ("anthropic:claude-opus-4-1-20250805", "anthropic:claude-opus-4-1"),
        ("anthropic:claude-3-5-haiku-latest", "anthropic:claude-3-5-haiku"),
    ],
)
def test_longest_prefix_prices(model_id: str, row: str) -> None:
    from fanflow.executors.llm import BUILTIN_PRICES

    assert price_of(model_id) == BUILTIN_PRICES[row]


@pytest.mark.parametrize("model_id", ["openai:gpt-4o-audio", "openai:gpt-5.1", "anthropic:claude-opus-4-9"])
def test_other_models_are_not_priced_by_a_shorter_row(model_id: str) -> None:
    assert price_of(model_id) is None


def test_openai_and_anthropic_cache_defaults() -> None:
    configure(
        prices={
            "openai:plain": {"input": 10.0, "output": 20.0},
            "anthropic:plain": {"input": 10.0, "output": 20.0},
        }
    )
    # openai: cached at half the input price
    assert cost_usd("openai:plain", input_tokens=1000, cached_tokens=1000, output_tokens=0) == pytest.approx(
        1000 * 5.0 / 1e6
    )
    # anthropic: cached reads at 0.1 x input, writes at 1.25 x input
    cost = cost_usd(
        "anthropic:plain", input_tokens=3000, cached_tokens=1000, cache_write_tokens=1000, output_tokens=1000
    )
    assert cost == pytest.approx((1000 * 10.0 + 1000 * 1.0 + 1000 * 12.5 + 1000 * 20.0) / 1e6)


def test_configured_prices_override_the_table() -> None:
    assert cost_usd("openai:gpt-4o-mini", input_tokens=1_000_000, output_tokens=0) == pytest.approx(0.15)
    configure(prices={"openai:gpt-4o-mini": {"input": 1.0, "output": 2.0, "cached_input": 0.0}})
    assert cost_usd(
        "openai:gpt-4o-mini-2024-07-18", input_tokens=1_000_000, output_tokens=0
    ) == pytest.approx(1.0)
    assert cost_usd("openai:gpt-4o-mini", input_tokens=10, cached_tokens=10, output_tokens=0) == 0.0
    configure()
    assert cost_usd("openai:gpt-4o-mini", input_tokens=1_000_000, output_tokens=0) == pytest.approx(0.15)


def test_unknown_model_costs_nothing_and_warns_once(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="fanflow"):
        for _ in range(3):
            assert cost_usd("openai:never-heard-of-it", input_tokens=10, output_tokens=10) == 0.0
    warnings = [r for r in caplog.records if "never-heard-of-it" in r.getMessage()]
    assert len(warnings) == 1


def test_free_declared_provider_costs_nothing_silently(caplog: pytest.LogCaptureFixture) -> None:
    configure(providers={"local": {"base_url": "http://h/v1", "free": True}})
    with caplog.at_level(logging.WARNING, logger="fanflow"):
        assert cost_usd("local:any-model", input_tokens=10**6, output_tokens=10**6) == 0.0
    assert not caplog.records


# --- parse_output ---------------------------------------------------------------------------------


def _reply(text: str | None, *tool_calls: dict[str, Any]) -> LLMReply:
    return LLMReply(
        text=text, tool_calls=tuple(tool_calls), usage=Usage(calls=1), model_id="openai:gpt-4o-mini"
    )


def test_plain_text_output() -> None:
    assert parse_output(_request(), _reply("hello")) == "hello"
    assert parse_output(_request(), _reply(None)) == ""


def test_schema_output_is_validated_json() -> None:
    request = _request(output_schema=SCHEMA)
    assert parse_output(request, _reply('{"name": "a", "n": 1}')) == {"name": "a", "n": 1}
    assert parse_output(request, _reply('```json\n{"name": "b"}\n```')) == {"name": "b"}


def test_schema_mismatch_names_the_path() -> None:
    request = _request(output_schema=SCHEMA)
    text = '{"name": "a", "n": "one"}'
    with pytest.raises(OutputValidationError) as info:
        parse_output(request, _reply(text))
    assert str(info.value).startswith("output does not match output_schema: $.n: ")
    assert info.value.raw == text
    with pytest.raises(OutputValidationError, match=r"output_schema: \$: 'name' is a required property"):
        parse_output(request, _reply("{}"))


@pytest.mark.parametrize("text", [None, "", "Sure! Here it is: {name: a}"])
def test_not_json_output(text: str | None) -> None:
    with pytest.raises(OutputValidationError, match=r"^output is not JSON") as info:
        parse_output(_request(output_schema=SCHEMA), _reply(text))
    assert info.value.raw == text


def test_schema_draft_from_dollar_schema() -> None:
    # Draft 4 treats exclusiveMaximum as a boolean modifier of maximum
    schema = {
        "$schema": "http://json-schema.org/draft-04/schema#",
        "type": "number",
        "maximum": 5,
        "exclusiveMaximum": True,
    }
    request = _request(output_schema=schema)
    assert parse_output(request, _reply("4")) == 4
    with pytest.raises(OutputValidationError):
        parse_output(request, _reply("5"))


def test_invalid_schema_is_a_spec_error() -> None:
    with pytest.raises(SpecError, match="output_schema is not a valid JSON schema"):
        parse_output(_request(output_schema={"type": "nope"}), _reply("1"))
