"""``call_model`` over real HTTP against the fake model server, for both wire APIs."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from fanflow.dev.fake_llm import FakeLLM
from fanflow.errors import ConfigError, ProviderError, RateLimitedError, TransientError
from fanflow.executors.llm import (
    LLMRequest,
    build_request,
    call_model,
    close_clients,
    configure,
    parse_output,
)
from fanflow.spec import LLMCall, ToolSpec

pytestmark = pytest.mark.integration

KEY = "sk-fake-integration-0123456789"
MODELS = {"openai": "openai:gpt-4o-mini", "anthropic": "anthropic:claude-haiku-4-5"}
SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"title": {"type": "string"}, "score": {"type": "integer"}},
    "required": ["title", "score"],
}
TOOL = ToolSpec(
    name="search",
    description="Search the web",
    parameters={"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]},
)


@pytest.fixture(scope="module")
def server() -> Iterator[FakeLLM]:
    with FakeLLM(latency_s=0.0) as fake:
        yield fake
    close_clients()


@pytest.fixture(autouse=True)
def _env(server: FakeLLM, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    server.reset()
    configure()
    monkeypatch.setenv("OPENAI_BASE_URL", server.url + "/v1")
    monkeypatch.setenv("ANTHROPIC_BASE_URL", server.url)
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
    yield


def _request(api: str, prompt: str = "Tell me about otters", **fields: Any) -> LLMRequest:
    return build_request(LLMCall(model=MODELS[api], prompt=prompt, **fields), {})


@pytest.fixture(params=["openai", "anthropic"])
def api(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


def test_text_reply_usage_and_headers(server: FakeLLM, api: str) -> None:
    server.reply_next("Otters hold hands while sleeping.")
    reply = call_model(_request(api, system="Be brief.", max_tokens=100))
    assert reply.text == "Otters hold hands while sleeping."
    assert reply.usage.calls == 1
    assert reply.usage.input_tokens > 0 and reply.usage.output_tokens > 0
    assert reply.usage.cost_usd > 0
    assert reply.finish_reason in ("stop", "end_turn")
    assert all(name == name.lower() for name in reply.headers)
    (recorded,) = server.requests
    if api == "openai":
        assert recorded.path == "/v1/chat/completions"
        assert recorded.headers["authorization"] == f"Bearer {KEY}"
        assert recorded.body["messages"][0] == {"role": "system", "content": "Be brief."}
    else:
        assert recorded.path == "/v1/messages"
        assert recorded.headers["x-api-key"] == KEY
        assert recorded.headers["anthropic-version"] == "2023-06-01"
        assert recorded.body["system"] == "Be brief."
    assert recorded.body["max_tokens"] == 100


def test_cached_tokens_are_part_of_input(api: str) -> None:
    reply = call_model(_request(api, prompt="Long shared prefix [[fake:cached=100]] " + "word " * 400))
    usage = reply.usage
    assert usage.cached_tokens == 100
    assert usage.input_tokens >= 100 + 1
    uncached_only = call_model(_request(api, prompt="Long shared prefix " + "word " * 400)).usage
    assert uncached_only.cached_tokens == 0
    assert usage.cost_usd < uncached_only.cost_usd


def test_tools_are_sent_and_calls_come_back(server: FakeLLM, api: str) -> None:
    request = _request(api, prompt="Find otter facts [[fake:tool=search]]", tools=[TOOL])
    reply = call_model(request)
    (call,) = reply.tool_calls
    assert call["name"] == "search" and isinstance(call["arguments"], dict)
    assert isinstance(call["id"], str) and call["id"]
    sent = server.requests[-1].body["tools"]
    if api == "openai":
        assert sent == [
            {
                "type": "function",
                "function": {
                    "name": "search",
                    "description": "Search the web",
                    "parameters": TOOL.parameters,
                },
            }
        ]
    else:
        assert sent == [{"name": "search", "description": "Search the web", "input_schema": TOOL.parameters}]
    output = parse_output(request, reply)
    assert output["tool_calls"] == [call]


def test_structured_output(server: FakeLLM, api: str) -> None:
    request = _request(
        api, prompt='Rate otters [[fake:json={"title": "Otters", "score": 9}]]', output_schema=SCHEMA
    )
    reply = call_model(request)
    assert reply.tool_calls == ()
    assert parse_output(request, reply) == {"title": "Otters", "score": 9}
    body = server.requests[-1].body
    if api == "openai":
        assert body["response_format"]["json_schema"]["schema"] == SCHEMA
    else:
        assert body["tool_choice"] == {"type": "tool", "name": "structured_output"}


def test_structured_output_from_the_schema(api: str) -> None:
    request = _request(api, prompt="Rate otters", output_schema=SCHEMA)
    output = parse_output(request, call_model(request))
    assert set(output) >= {"title", "score"}


def test_429_is_rate_limited_with_retry_after(server: FakeLLM, api: str) -> None:
    server.fail_next(1, status=429, retry_after_s=2.5)
    with pytest.raises(RateLimitedError) as info:
        call_model(_request(api))
    assert info.value.retry_after_s == pytest.approx(2.5)
    assert KEY not in str(info.value)
    assert call_model(_request(api)).text  # and the next call goes through


def test_529_overloaded_is_rate_limited(server: FakeLLM) -> None:
    server.fail_next(1, status=529, retry_after_s=None)
    with pytest.raises(RateLimitedError):
        call_model(_request("anthropic"))


def test_500_is_transient(api: str) -> None:
    with pytest.raises(TransientError) as info:
        call_model(_request(api, prompt="[[fake:status=500]]"))
    assert not isinstance(info.value, RateLimitedError)
    assert "HTTP 500" in str(info.value)


def test_malformed_body_is_transient(api: str) -> None:
    with pytest.raises(TransientError, match="malformed response"):
        call_model(_request(api, prompt="[[fake:malformed]]"))


def test_400_is_a_provider_error(server: FakeLLM, api: str) -> None:
    server.fail_next(1, status=400, retry_after_s=None)
    with pytest.raises(ProviderError) as info:
        call_model(_request(api))
    assert info.value.status == 400
    assert KEY not in str(info.value)


def test_bad_key_is_a_provider_error_without_the_key(server: FakeLLM, api: str) -> None:
    server.fail_next(1, status=401, retry_after_s=None, body={"error": {"message": f"bad key {KEY}"}})
    with pytest.raises(ProviderError) as info:
        call_model(_request(api))
    assert info.value.status == 401
    assert KEY not in str(info.value)


def test_missing_key_is_a_config_error(server: FakeLLM, api: str, monkeypatch: pytest.MonkeyPatch) -> None:
    env = "OPENAI_API_KEY" if api == "openai" else "ANTHROPIC_API_KEY"
    monkeypatch.delenv(env)
    with pytest.raises(ConfigError, match=f"{env} is not set on this worker"):
        call_model(_request(api))
    assert server.count == 0


def test_connection_refused_is_transient(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    with pytest.raises(TransientError, match="ConnectError"):
        call_model(_request("openai"))


def test_declared_free_provider(server: FakeLLM, monkeypatch: pytest.MonkeyPatch) -> None:
    local = {"api": "openai", "base_url": server.url + "/v1", "api_key_env": "LOCAL_KEY", "free": True}
    configure(providers={"local": local})
    monkeypatch.setenv("LOCAL_KEY", "local-key")
    reply = call_model(build_request(LLMCall(model="local:fake-model", prompt="hi"), {}))
    assert reply.usage.cost_usd == 0.0 and reply.usage.input_tokens > 0
    assert server.requests[-1].headers["authorization"] == "Bearer local-key"
    # the key of a free provider is optional: without it no Authorization header is sent
    monkeypatch.delenv("LOCAL_KEY")
    with pytest.raises(ProviderError, match="HTTP 401"):  # this server insists on one
        call_model(build_request(LLMCall(model="local:fake-model", prompt="hi"), {}))
    assert "authorization" not in server.requests[-1].headers


def test_many_threads_share_one_pool(server: FakeLLM) -> None:
    from concurrent.futures import ThreadPoolExecutor

    server.set_latency(0.05)
    try:
        with ThreadPoolExecutor(max_workers=64) as pool:
            replies = list(pool.map(lambda i: call_model(_request("openai", prompt=f"q{i}")), range(256)))
    finally:
        server.set_latency(0.0)
    assert len(replies) == 256 and all(r.usage.calls == 1 for r in replies)
    assert server.max_in_flight >= 32
    json.dumps([r.text for r in replies])
