"""The fake model server: both wire formats, token accounting, directives, controls and concurrency."""

from __future__ import annotations

import asyncio
import json
import math
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import httpx
import jsonschema
import pytest

from fanflow.dev import FakeLLM
from fanflow.dev.fake_limits import format_duration
from fanflow.dev.fake_schema import sample
from fanflow.ratelimit import parse_headers

OPENAI_AUTH = {"Authorization": "Bearer test-key"}
ANTHROPIC_AUTH = {"x-api-key": "test-key", "anthropic-version": "2023-06-01"}


@pytest.fixture(scope="module")
def server() -> Iterator[FakeLLM]:
    with FakeLLM() as fake:
        yield fake


@pytest.fixture
def fake(server: FakeLLM) -> Iterator[FakeLLM]:
    server.reset()
    server.set_latency(0.0)
    yield server


@pytest.fixture
def client(server: FakeLLM) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=10) as http:
        yield http


def openai(client: httpx.Client, text: str, **extra: Any) -> httpx.Response:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}], **extra}
    return client.post("/v1/chat/completions", headers=OPENAI_AUTH, json=body)


def anthropic(client: httpx.Client, text: str, **extra: Any) -> httpx.Response:
    body = {"model": "claude-sonnet-4-5", "max_tokens": 1000, "messages": [{"role": "user", "content": text}]}
    return client.post("/v1/messages", headers=ANTHROPIC_AUTH, json={**body, **extra})


SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "title": {"type": "string", "minLength": 10},
        "score": {"type": "integer", "minimum": 3, "maximum": 9},
        "ratio": {"type": "number", "exclusiveMaximum": 1},
        "ok": {"type": "boolean"},
        "kind": {"enum": ["alpha", "beta"]},
        "when": {"type": "string", "format": "date-time"},
        "tags": {"type": "array", "items": {"type": "string"}, "minItems": 2},
        "note": {"anyOf": [{"type": "string"}, {"type": "null"}]},
        "items": {"type": "array", "items": {"$ref": "#/$defs/Item"}},
        "nothing": {"type": "null"},
    },
    "required": ["title", "score", "items"],
    "additionalProperties": False,
    "$defs": {
        "Item": {
            "type": "object",
            "properties": {
                "name": {"type": "string"},
                "children": {"type": "array", "items": {"$ref": "#/$defs/Item"}},
            },
            "required": ["name"],
        }
    },
}


def test_openai_wire_shape_and_token_counts(fake: FakeLLM, client: httpx.Client) -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Tell me about cats"}]
    response = client.post(
        "/v1/chat/completions", headers=OPENAI_AUTH, json={"model": "gpt-4o", "messages": messages}
    )
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    data = response.json()
    assert set(data) >= {"id", "object", "created", "model", "choices", "usage"}
    assert (data["object"], data["model"], len(data["choices"])) == ("chat.completion", "gpt-4o", 1)
    choice = data["choices"][0]
    assert choice["index"] == 0 and choice["finish_reason"] == "stop"
    assert choice["message"]["role"] == "assistant"
    text = choice["message"]["content"]
    assert text == "[gpt-4o] answer about: Tell me about cats"
    assert "tool_calls" not in choice["message"]
    prompt = math.ceil(len("Be brief.Tell me about cats") / 4)
    assert data["usage"] == {
        "prompt_tokens": prompt,
        "completion_tokens": math.ceil(len(text) / 4),
        "total_tokens": prompt + math.ceil(len(text) / 4),
        "prompt_tokens_details": {"cached_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0},
    }


def test_anthropic_wire_shape_and_token_counts(fake: FakeLLM, client: httpx.Client) -> None:
    content = [{"type": "text", "text": "What is a [[fake:reply=forty two]] number?"}]
    response = anthropic(client, "", system="You count.", messages=[{"role": "user", "content": content}])
    assert response.status_code == 200
    data = response.json()
    assert data["id"].startswith("msg_") and data["type"] == "message" and data["role"] == "assistant"
    assert data["content"] == [{"type": "text", "text": "forty two"}]
    assert (data["model"], data["stop_reason"], data["stop_sequence"]) == (
        "claude-sonnet-4-5",
        "end_turn",
        None,
    )
    chars = len("You count.") + len(content[0]["text"])
    assert data["usage"] == {
        "input_tokens": math.ceil(chars / 4),
        "output_tokens": math.ceil(len("forty two") / 4),
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
    }


def test_cached_tokens_are_reported_as_each_provider_does(fake: FakeLLM, client: httpx.Client) -> None:
    text = "x" * 400 + " [[fake:cached=60]]"
    prompt = math.ceil(len(text) / 4)
    usage = openai(client, text).json()["usage"]
    assert usage["prompt_tokens"] == prompt  # includes the cached part
    assert usage["prompt_tokens_details"]["cached_tokens"] == 60
    usage = anthropic(client, text).json()["usage"]
    assert usage["cache_read_input_tokens"] == 60
    assert usage["input_tokens"] == prompt - 60  # excludes cache reads
    # capped at the prompt
    usage = anthropic(client, "short [[fake:cached=1000]]").json()["usage"]
    assert (usage["input_tokens"], usage["cache_read_input_tokens"]) == (0, math.ceil(26 / 4))


def test_cached_tokens_from_the_constructor() -> None:
    with FakeLLM(cached_tokens=5) as fake, httpx.Client(base_url=fake.url) as client:
        assert openai(client, "y" * 80).json()["usage"]["prompt_tokens_details"]["cached_tokens"] == 5
        usage = anthropic(client, "y" * 80).json()["usage"]
        assert (usage["input_tokens"], usage["cache_read_input_tokens"]) == (15, 5)


def test_max_tokens_cuts_the_answer(fake: FakeLLM, client: httpx.Client) -> None:
    data = openai(client, "[[fake:reply=" + "z" * 100 + "]]", max_tokens=3).json()
    assert data["choices"][0]["finish_reason"] == "length"
    assert data["choices"][0]["message"]["content"] == "z" * 12
    assert data["usage"]["completion_tokens"] == 3
    data = anthropic(client, "[[fake:reply=" + "z" * 100 + "]]", max_tokens=2).json()
    assert (data["stop_reason"], data["content"][0]["text"], data["usage"]["output_tokens"]) == (
        "max_tokens",
        "z" * 8,
        2,
    )


def test_sampled_values_validate_against_their_schema() -> None:
    jsonschema.validate(sample(SCHEMA), SCHEMA)
    value = sample(SCHEMA)
    assert (
        value["score"] == 3
        and value["kind"] == "alpha"
        and len(value["tags"]) == 2
        and value["nothing"] is None
    )
    all_of = {"allOf": [{"$ref": "#/$defs/A"}, {"properties": {"b": {"const": 7}}, "required": ["b"]}]}
    all_of["$defs"] = {
        "A": {"type": "object", "properties": {"a": {"type": ["string", "null"]}}, "required": ["a"]}
    }
    assert sample(all_of) == {"a": "fake", "b": 7}
    assert sample({"type": "array", "prefixItems": [{"type": "integer"}, {"type": "boolean"}]}) == [1, True]


def test_json_schema_response_format(fake: FakeLLM, client: httpx.Client) -> None:
    response_format = {
        "type": "json_schema",
        "json_schema": {"name": "output", "schema": SCHEMA, "strict": False},
    }
    data = openai(client, "make a report", response_format=response_format).json()
    jsonschema.validate(json.loads(data["choices"][0]["message"]["content"]), SCHEMA)
    data = openai(client, "anything", response_format={"type": "json_object"}).json()
    assert json.loads(data["choices"][0]["message"]["content"]) == {
        "answer": "[gpt-4o-mini] answer about: anything"
    }


def test_anthropic_forced_tool_follows_its_input_schema(fake: FakeLLM, client: httpx.Client) -> None:
    tools = [
        {"name": "other", "input_schema": {"type": "object"}},
        {"name": "structured_output", "input_schema": SCHEMA},
    ]
    choice = {"type": "tool", "name": "structured_output"}
    data = anthropic(client, "report", tools=tools, tool_choice=choice).json()
    assert data["stop_reason"] == "tool_use"
    [block] = data["content"]
    assert (
        block["type"] == "tool_use"
        and block["name"] == "structured_output"
        and block["id"].startswith("toolu_")
    )
    jsonschema.validate(block["input"], SCHEMA)
    # an override that is a JSON object becomes the tool's input
    data = anthropic(client, 'r [[fake:json={"title": 5}]]', tools=tools, tool_choice=choice).json()
    assert data["content"][0]["input"] == {"title": 5}


def test_openai_forced_function_call(fake: FakeLLM, client: httpx.Client) -> None:
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": SCHEMA}}]
    choice = {"type": "function", "function": {"name": "lookup"}}
    data = openai(client, "find it", tools=tools, tool_choice=choice).json()
    choice_out = data["choices"][0]
    assert choice_out["finish_reason"] == "tool_calls"
    assert choice_out["message"]["content"] is None
    [call] = choice_out["message"]["tool_calls"]
    assert call["type"] == "function" and call["function"]["name"] == "lookup"
    assert isinstance(call["function"]["arguments"], str)
    jsonschema.validate(json.loads(call["function"]["arguments"]), SCHEMA)


def test_tool_directive_calls_a_declared_tool(fake: FakeLLM, client: httpx.Client) -> None:
    tools = [{"name": "search", "input_schema": {"type": "object", "properties": {"q": {"type": "string"}}}}]
    data = anthropic(client, "go [[fake:tool=search]]", tools=tools).json()
    assert data["content"][0]["input"] == {"q": "fake"} and data["stop_reason"] == "tool_use"
    response = openai(client, "go [[fake:tool=missing]]")
    assert response.status_code == 400 and "missing" in response.json()["error"]["message"]


def test_reply_and_json_directives(fake: FakeLLM, client: httpx.Client) -> None:
    assert (
        openai(client, "a [[fake:reply=hello there]] b").json()["choices"][0]["message"]["content"]
        == "hello there"
    )
    text = anthropic(client, 'q [[fake:json={"a": [1, 2]}]]').json()["content"][0]["text"]
    assert json.loads(text) == {"a": [1, 2]}
    response = openai(client, "[[fake:bogus=1]]")
    assert response.status_code == 400 and "bogus" in response.json()["error"]["message"]
    assert openai(client, "[[fake:latency=soon]]").status_code == 400


def test_status_and_malformed_directives(fake: FakeLLM, client: httpx.Client) -> None:
    response = openai(client, "[[fake:status=500]]")
    assert response.status_code == 500
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}
    response = anthropic(client, "[[fake:status=429]]")
    assert response.status_code == 429 and response.headers["retry-after"] == "1"
    assert response.json()["type"] == "error" and response.json()["error"]["type"] == "rate_limit_error"
    response = openai(client, "[[fake:malformed]]")
    assert response.status_code == 200
    with pytest.raises(json.JSONDecodeError):
        response.json()


def test_fail_next_then_recover(fake: FakeLLM, client: httpx.Client) -> None:
    fake.fail_next(2, status=429, retry_after_s=1.5)
    for _ in range(2):
        response = openai(client, "hi")
        assert response.status_code == 429
        assert (response.headers["retry-after"], response.headers["retry-after-ms"]) == ("1.5", "1500")
        assert response.json()["error"]["code"] == "rate_limit_exceeded"
        assert parse_headers(response.headers).retry_after_s == pytest.approx(1.5)
    assert openai(client, "hi").status_code == 200
    fake.fail_next(1, status=529, retry_after_s=None)
    response = anthropic(client, "hi")
    assert response.status_code == 529 and "retry-after" not in response.headers
    assert response.json() == {
        "type": "error",
        "error": {"type": "overloaded_error", "message": "overloaded"},
    }
    fake.fail_next(1, status=503, body="<html>down</html>")
    response = openai(client, "hi")
    assert (response.status_code, response.text) == (503, "<html>down</html>")


def test_reply_next_in_order_then_default(fake: FakeLLM, client: httpx.Client) -> None:
    fake.reply_next("first", "second")
    texts = [openai(client, "q").json()["choices"][0]["message"]["content"] for _ in range(3)]
    assert texts == ["first", "second", "[gpt-4o-mini] answer about: q"]


def test_auth_and_request_errors(fake: FakeLLM, client: httpx.Client) -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    response = client.post("/v1/chat/completions", json=body)
    assert response.status_code == 401
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}
    response = client.post(
        "/v1/messages", json={**body, "max_tokens": 5}, headers={"anthropic-version": "2023-06-01"}
    )
    assert response.status_code == 401 and response.json()["error"]["type"] == "authentication_error"
    response = client.post("/v1/messages", json={**body, "max_tokens": 5}, headers={"x-api-key": "k"})
    assert response.status_code == 400 and response.json()["error"]["type"] == "invalid_request_error"
    assert "test-key" not in response.text
    assert client.post("/v1/chat/completions", headers=OPENAI_AUTH, content=b"{not json").status_code == 400
    assert client.post("/v1/nowhere", headers=OPENAI_AUTH, json=body).status_code == 404
    assert client.get("/v1/chat/completions", headers=OPENAI_AUTH).status_code == 405
    system_message = [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]
    assert anthropic(client, "", messages=system_message).status_code == 400
    response = client.post("/v1/messages", headers=ANTHROPIC_AUTH, json=body)  # no max_tokens
    assert response.status_code == 400 and "max_tokens" in response.json()["error"]["message"]


def test_models_listing(fake: FakeLLM, client: httpx.Client) -> None:
    data = client.get("/v1/models", headers=OPENAI_AUTH).json()
    assert data["object"] == "list" and data["data"][0]["object"] == "model"
    data = client.get("/v1/models", headers=ANTHROPIC_AUTH).json()
    assert data["data"][0]["type"] == "model" and data["has_more"] is False


def test_recorded_requests(fake: FakeLLM, client: httpx.Client) -> None:
    openai(client, "one")
    anthropic(client, "two")
    client.get("/v1/models", headers=OPENAI_AUTH)
    recorded = fake.requests
    assert [r.path for r in recorded] == ["/v1/chat/completions", "/v1/messages", "/v1/models"]
    assert recorded[0].headers["authorization"] == "Bearer test-key"
    assert recorded[1].headers["anthropic-version"] == "2023-06-01"
    assert recorded[1].body["messages"][0]["content"] == "two" and recorded[2].body is None
    assert recorded[0].started_at <= recorded[1].started_at <= time.time()
    assert fake.count == 3 and fake.in_flight == 0 and fake.max_in_flight == 1
    assert fake.requests_by_path() == {"/v1/chat/completions": 1, "/v1/messages": 1, "/v1/models": 1}
    fake.reset()
    assert (fake.requests, fake.count, fake.requests_by_path()) == ([], 0, {})


def test_rate_limit_headers_count_down() -> None:
    limits = {"requests": 60, "tokens": 200_000}  # a request back every second
    with FakeLLM(rate_limits=limits) as fake, httpx.Client(base_url=fake.url) as client:
        first = openai(client, "a" * 40).headers
        second = openai(client, "a" * 40).headers
        assert first["x-ratelimit-limit-requests"] == "60"
        assert (
            int(second["x-ratelimit-remaining-requests"]) == int(first["x-ratelimit-remaining-requests"]) - 1
        )
        assert (
            int(second["x-ratelimit-remaining-tokens"]) < int(first["x-ratelimit-remaining-tokens"]) < 200_000
        )
        parsed = parse_headers(second).windows["requests"]
        assert parsed.limit == 60 and parsed.reset_after_s is not None and 1 < parsed.reset_after_s <= 2
        headers = anthropic(client, "b").headers
        assert headers["anthropic-ratelimit-tokens-limit"] == "200000"
        assert int(headers["anthropic-ratelimit-requests-remaining"]) == 57
        assert datetime.fromisoformat(headers["anthropic-ratelimit-requests-reset"]).tzinfo is not None
    assert [format_duration(s) for s in (0, 0.12, 1, 90.5, 360)] == ["0s", "120ms", "1s", "1m30.5s", "6m0s"]


def test_enforced_rate_limits_answer_429() -> None:
    with (
        FakeLLM(rate_limits={"requests": 2}, enforce_rate_limits=True) as fake,
        httpx.Client(base_url=fake.url) as c,
    ):
        assert [openai(c, "x").status_code for _ in range(3)] == [200, 200, 429]
        assert float(anthropic(c, "x").headers["retry-after"]) > 0


def test_keep_alive_chunked_body_and_connection_close(fake: FakeLLM) -> None:
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "raw"}]}).encode()
    head = "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer k\r\n"
    chunked = f"{len(body) - 5:x}\r\n".encode() + body[:-5] + b"\r\n5\r\n" + body[-5:] + b"\r\n0\r\n\r\n"
    with socket.create_connection(("127.0.0.1", fake.port), timeout=5) as sock:
        sock.sendall(f"{head}Transfer-Encoding: chunked\r\n\r\n".encode() + chunked)
        sock.sendall(f"{head}Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)
        received = b""
        while chunk := sock.recv(65536):  # ends when the server closes the connection
            received += chunk
    assert received.count(b"HTTP/1.1 200 OK") == 2
    assert b"connection: keep-alive" in received and b"connection: close" in received
    assert received.count(b"answer about: raw") == 2


async def _raw_post(port: int, payload: bytes) -> int:
    """One request on its own connection; its status (a bare client: httpx's pool costs far more CPU
    than the server at hundreds of connections)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer k\r\nConnection: close"
    writer.write(f"{head}\r\nContent-Length: {len(payload)}\r\n\r\n".encode() + payload)
    response = await reader.read()
    writer.close()
    await writer.wait_closed()
    return int(response.split(b" ", 2)[1])


def test_concurrent_requests_wait_together(fake: FakeLLM) -> None:
    message = {"role": "user", "content": "slow [[fake:latency=0.3]]"}
    payload = json.dumps({"model": "m", "messages": [message]})

    async def run() -> list[int]:
        return await asyncio.gather(*[_raw_post(fake.port, payload.encode()) for _ in range(200)])

    started = time.monotonic()
    statuses = asyncio.run(run())
    elapsed = time.monotonic() - started
    assert statuses == [200] * 200
    assert fake.max_in_flight == 200 and fake.in_flight == 0
    assert elapsed < 1.5


def test_serve_prints_where_it_listens_and_stops_on_ctrl_c() -> None:
    code = "from fanflow.dev import serve; serve('127.0.0.1', 0, 0.0)"
    with subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as proc:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("fake model server on http://127.0.0.1:") and "/v1" in line
        url = line.split()[4]
        assert httpx.post(url + "/v1/chat/completions", headers=OPENAI_AUTH, json={}).status_code == 400
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=10)
    assert proc.returncode == 0 and "Traceback" not in err
