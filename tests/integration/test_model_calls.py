"""Model-call branches through a real worker, the real client code and the fake model server over HTTP."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from typing import Any

import pytest

from fanflow import Client
from fanflow.app import limiter_of
from fanflow.dev.fake_llm import FakeLLM
from fanflow.errors import SpecError
from fanflow.executors.llm import cost_usd
from fanflow.ratelimit import Limit
from fanflow.result import JobStatus, OutcomeStatus
from fanflow.spec import FanOut

pytestmark = pytest.mark.integration

MINI = "openai:gpt-4o-mini"
SECRET_OPENAI = f"sk-test-{secrets.token_hex(12)}"
SECRET_ANTHROPIC = f"sk-ant-test-{secrets.token_hex(12)}"


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeLLM]:
    """A fake model server, and this process's provider variables pointing at it."""
    with FakeLLM() as server, pytest.MonkeyPatch.context() as patch:
        patch.setenv("OPENAI_BASE_URL", f"{server.url}/v1")
        patch.setenv("OPENAI_API_KEY", SECRET_OPENAI)
        patch.setenv("ANTHROPIC_BASE_URL", server.url)
        patch.setenv("ANTHROPIC_API_KEY", SECRET_ANTHROPIC)
        yield server


@pytest.fixture
def server(fake: FakeLLM) -> FakeLLM:
    fake.reset()
    return fake


def _llm(model: str, prompt: str, **extra: Any) -> dict[str, Any]:
    return {
        "kind": "llm",
        "model": model,
        "prompt": prompt,
        "max_tokens": extra.pop("max_tokens", 64),
        **extra,
    }


def _fanout(subtasks: list[dict[str, Any]], **extra: Any) -> FanOut:
    return FanOut.model_validate({"name": f"llm-{secrets.token_hex(3)}", "subtasks": subtasks, **extra})


def _bodies(server: FakeLLM, path: str) -> list[dict[str, Any]]:
    return [r.body for r in server.requests if r.path == path and isinstance(r.body, dict)]


def test_usage_and_cost_per_branch_model_and_job(client: Client, server: FakeLLM) -> None:
    spec = _fanout(
        [
            {
                "key": "oa",
                "run": _llm(
                    "openai:gpt-4o-mini",
                    "Say hi to everyone in the room, politely and briefly [[fake:cached=8]] {key}",
                ),
            },
            {
                "key": "an",
                "run": _llm(
                    "anthropic:claude-sonnet-4-5",
                    "Say hi to everyone in the room, politely and briefly [[fake:cached=8]] {key}",
                ),
            },
            {"key": "oa2", "run": _llm("openai:gpt-4o-mini", "Say hello {key}")},
        ],
        failure={"policy": "best_effort"},
    )
    result = client.submit(spec).wait(timeout=60)
    assert result.status is JobStatus.SUCCEEDED, result.error
    oa, an = result.outcome("oa"), result.outcome("an")
    assert oa.usage.calls == an.usage.calls == 1
    # Both report 8 cached tokens *inside* input_tokens, whichever way the provider counts them.
    assert oa.usage.cached_tokens == an.usage.cached_tokens == 8
    assert an.usage.input_tokens == oa.usage.input_tokens  # same prompt length, same total input
    expected = cost_usd("anthropic:claude-sonnet-4-5", input_tokens=an.usage.input_tokens, cached_tokens=8,
                        output_tokens=an.usage.output_tokens)  # fmt: skip
    assert an.usage.cost_usd == pytest.approx(expected)
    assert expected == pytest.approx(
        ((an.usage.input_tokens - 8) * 3 + 8 * 0.3 + an.usage.output_tokens * 15) / 1e6
    )
    by_model = result.usage_by_model
    assert set(by_model) == {"openai:gpt-4o-mini", "anthropic:claude-sonnet-4-5"}
    assert by_model["openai:gpt-4o-mini"].calls == 2
    assert (
        by_model["openai:gpt-4o-mini"].input_tokens
        == oa.usage.input_tokens + result.outcome("oa2").usage.input_tokens
    )
    assert result.usage.calls == 3
    assert result.usage.cost_usd == pytest.approx(sum(o.usage.cost_usd for o in result.outcomes))


def test_templates_fill_vars_context_and_key_and_leave_other_braces(client: Client, server: FakeLLM) -> None:
    spec = _fanout(
        [{"key": "k1", "vars": {"topic": "tides"}, "run": _llm(
            "openai:gpt-4o-mini", 'About {topic} for {key} in {context}: answer as {"json": true}',
            system="Expert on {topic}.")}],
        context="the harbour",
    )  # fmt: skip
    assert client.submit(spec).wait(timeout=60).status is JobStatus.SUCCEEDED
    body = _bodies(server, "/v1/chat/completions")[-1]
    assert body["messages"][0] == {"role": "system", "content": "Expert on tides."}
    assert body["messages"][1]["content"] == 'About tides for k1 in the harbour: answer as {"json": true}'


def test_an_unknown_template_variable_fails_at_submit_naming_the_field(client: Client) -> None:
    spec = _fanout([{"key": "a", "run": _llm("openai:gpt-4o-mini", "About {topik}")}])
    with pytest.raises(SpecError, match=r"subtasks\.0\.run\.prompt.*topik") as caught:
        client.submit(spec)
    assert caught.value.field == "subtasks.0.run.prompt"
    merge = {"strategy": "synthesize", "run": _llm("openai:gpt-4o", "Combine {results} and {nope}")}
    with pytest.raises(SpecError, match=r"merge\.run\.prompt"):
        client.submit(_fanout([{"key": "a", "run": _llm("openai:gpt-4o-mini", "x")}], merge=merge))


def test_structured_output_is_requested_validated_and_retried_with_feedback(
    client: Client, server: FakeLLM
) -> None:
    schema = {"type": "object", "properties": {"score": {"type": "integer"}}, "required": ["score"]}
    server.reply_next('{"score": "high"}')  # the first answer breaks the schema
    spec = _fanout([{"key": "s", "retry": {"attempts": 3},
                     "run": _llm("openai:gpt-4o-mini", "Rate it", output_schema=schema)}])  # fmt: skip
    result = client.submit(spec).wait(timeout=60)
    outcome = result.outcome("s")
    assert result.status is JobStatus.SUCCEEDED, result.error
    assert outcome.attempts == 2 and outcome.output == {"score": 1}
    assert outcome.usage.calls == 2  # every attempt's tokens count
    first, second = _bodies(server, "/v1/chat/completions")[-2:]
    assert first["response_format"]["type"] == "json_schema"
    assert first["response_format"]["json_schema"]["schema"] == schema
    # The second request is the original plus the rejected answer and why, not a growing history.
    assert second["messages"][: len(first["messages"])] == first["messages"]
    assert second["messages"][len(first["messages"])] == {"role": "assistant", "content": '{"score": "high"}'}
    feedback = second["messages"][-1]
    assert feedback["role"] == "user" and "score" in feedback["content"] and "integer" in feedback["content"]
    assert len(second["messages"]) == len(first["messages"]) + 2


def test_a_rejected_answer_fails_after_its_attempts_naming_the_reasons(
    client: Client, server: FakeLLM
) -> None:
    server.reply_next("short", "short", "short")
    spec = _fanout([{"key": "s", "retry": {"attempts": 3}, "success": {"contains": ["DONE"]},
                     "run": _llm("anthropic:claude-haiku-4-5", "Finish with DONE")}])  # fmt: skip
    result = client.submit(spec).wait(timeout=60)
    outcome = result.outcome("s")
    assert outcome.status is OutcomeStatus.FAILED and outcome.attempts == 3
    assert outcome.error is not None and outcome.error.type == "OutputValidationError"
    assert "DONE" in outcome.error.message and "3 times" in outcome.error.message
    bodies = _bodies(server, "/v1/messages")[-3:]
    assert [len(b["messages"]) for b in bodies] == [1, 3, 3]  # bounded: original + last failure
    assert outcome.usage.calls == 3 and result.usage.calls == 3


def test_a_429_with_retry_after_cools_the_model_key_down_and_is_not_an_attempt(
    client: Client, server: FakeLLM
) -> None:
    model = f"openai:gpt-4o-mini-{secrets.token_hex(3)}"
    limiter_of(client.app).set_limit(Limit(key=model, requests=1000, window_s=60))
    server.fail_next(1, status=429, retry_after_s=0.4)
    result = client.submit(_fanout([{"key": "t", "run": _llm(model, "hi")}])).wait(timeout=60)
    assert result.status is JobStatus.SUCCEEDED, result.error
    assert result.outcome("t").attempts == 1
    assert len(_bodies(server, "/v1/chat/completions")) == 2
    started = [r.started_at for r in server.requests]
    assert started[1] - started[0] >= 0.35  # waited for Retry-After before asking again


def test_tools_are_sent_and_tool_calls_come_back(client: Client, server: FakeLLM) -> None:
    tool = {"name": "lookup", "description": "Find a fact", "parameters": {
        "type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]}}  # fmt: skip
    spec = _fanout([
        {"key": "o", "run": _llm("openai:gpt-4o-mini", "Use it [[fake:tool=lookup]]", tools=[tool])},
        {"key": "a", "run": _llm("anthropic:claude-haiku-4-5", "Use it [[fake:tool=lookup]]", tools=[tool])},
    ])  # fmt: skip
    result = client.submit(spec).wait(timeout=60)
    assert result.status is JobStatus.SUCCEEDED, result.error
    for key in ("o", "a"):
        calls = result.outcome(key).output["tool_calls"]  # type: ignore[index,call-overload]
        assert [(c["name"], c["arguments"]) for c in calls] == [("lookup", {"q": "fake"})]
    openai_body = _bodies(server, "/v1/chat/completions")[-1]
    assert openai_body["tools"] == [{"type": "function", "function": tool}]
    anthropic_body = _bodies(server, "/v1/messages")[-1]
    assert anthropic_body["tools"] == [
        {"name": "lookup", "description": "Find a fact", "input_schema": tool["parameters"]}
    ]


def test_synthesis_gets_outputs_in_declared_order_and_the_flagged_branches(
    client: Client, server: FakeLLM
) -> None:
    spec = _fanout(
        [
            {"key": "first", "run": _llm(MINI, "one [[fake:latency=0.6]] [[fake:reply=ALPHA]]")},
            {"key": "second", "run": _llm("openai:gpt-4o-mini", "two [[fake:reply=BETA]]")},
            {"key": "broken", "run": _llm("openai:gpt-4o-mini", "three [[fake:status=400]]")},
            {"key": "third", "run": _llm(MINI, "four [[fake:latency=0.3]] [[fake:reply=GAMMA]]")},
        ],
        merge={"strategy": "synthesize", "run": _llm(
            "anthropic:claude-sonnet-4-5", "On {context}.\nResults:\n{results}\nMissing:\n{flagged}")},
        failure={"policy": "best_effort"}, context="order",
    )  # fmt: skip
    result = client.submit(spec).wait(timeout=60)
    assert result.status is JobStatus.PARTIAL, result.error
    assert result.flagged == ["broken"]
    prompt = _bodies(server, "/v1/messages")[-1]["messages"][0]["content"]
    assert prompt.index("## first\nALPHA") < prompt.index("## second\nBETA") < prompt.index("## third\nGAMMA")
    assert "- broken (failed): ProviderError" in prompt
    assert isinstance(result.merged, str) and result.merged
    assert result.merge_usage.calls == 1
    assert result.usage_by_model["anthropic:claude-sonnet-4-5"].calls == 1
    assert result.usage.calls == 4  # three branches and the synthesis (the 400 spent nothing)


def test_the_budget_stops_new_calls_under_concurrency(client: Client, server: FakeLLM) -> None:
    server.set_latency(0.05)
    try:
        # Each call reserves about 13 prompt tokens + 32 max_tokens and really spends ~20.
        subtasks = [
            {"key": f"b{i}", "run": _llm(MINI, f"Budget test {i:03d} ok", max_tokens=32)} for i in range(60)
        ]
        spec = _fanout(subtasks, budget={"max_tokens": 400}, failure={"policy": "best_effort"})
        result = client.submit(spec).wait(timeout=60)
    finally:
        server.set_latency(0.0)
    assert result.budget_exhausted
    assert result.status is JobStatus.PARTIAL
    ran = [o for o in result.outcomes if o.status is OutcomeStatus.SUCCEEDED]
    stopped = [o for o in result.outcomes if o.status is OutcomeStatus.CANCELLED]
    assert ran and stopped and len(ran) + len(stopped) == 60
    assert all(o.error is not None and "budget exhausted" in o.error.message for o in stopped)
    assert result.usage.total_tokens <= 400  # reserved before each call: no overrun
    assert result.usage.calls == len(ran) == len(_bodies(server, "/v1/chat/completions"))


def test_a_token_limit_on_the_model_key_settles_to_the_real_usage(client: Client, server: FakeLLM) -> None:
    model = f"openai:gpt-4o-mini-{secrets.token_hex(3)}"
    limiter = limiter_of(client.app)
    limiter.set_limit(Limit(key=model, tokens=1_000_000, window_s=60, concurrency=3))
    subtasks = [{"key": f"k{i}", "run": _llm(model, f"Count me {i} [[fake:latency=0.1]]", max_tokens=500)}
                for i in range(12)]  # fmt: skip
    result = client.submit(_fanout(subtasks)).wait(timeout=60)
    assert result.status is JobStatus.SUCCEEDED, result.error
    status = limiter.status(model)
    assert status is not None
    # Each call reserved ~500 tokens; the window now holds what the provider reported, no more.
    assert status.tokens_in_window == result.usage.total_tokens
    assert status.in_flight == 0
    assert server.max_in_flight <= 3


def test_no_api_key_in_redis_or_results(client: Client, server: FakeLLM) -> None:
    spec = _fanout([{"key": "o", "run": _llm("openai:gpt-4o-mini", "hi")},
                    {"key": "b", "run": _llm("openai:gpt-4o-mini", "[[fake:status=401]]")},
                    {"key": "a", "run": _llm("anthropic:claude-haiku-4-5", "hi")}],
                   failure={"policy": "best_effort"})  # fmt: skip
    result = client.submit(spec).wait(timeout=60)
    assert result.status is JobStatus.PARTIAL
    # The provider did get the keys...
    assert any(r.headers.get("authorization") == f"Bearer {SECRET_OPENAI}" for r in server.requests)
    assert any(r.headers.get("x-api-key") == SECRET_ANTHROPIC for r in server.requests)
    # ...and nothing fanflow stored holds them.
    assert SECRET_OPENAI not in result.model_dump_json() and SECRET_ANTHROPIC not in result.model_dump_json()
    redis = client.store.client
    for name in redis.scan_iter(count=1000):
        kind = redis.type(name)
        if kind == "string":
            value: Any = redis.get(name)
        elif kind == "hash":
            value = redis.hgetall(name)
        elif kind == "list":
            value = redis.lrange(name, 0, -1)
        elif kind in ("set",):
            value = sorted(redis.smembers(name))
        elif kind == "zset":
            value = redis.zrange(name, 0, -1)
        elif kind == "stream":
            value = redis.xrange(name)
        else:
            continue
        text = json.dumps(value, default=str)
        assert SECRET_OPENAI not in text and SECRET_ANTHROPIC not in text, name


def test_a_big_fan_out_of_model_calls_goes_in_batches_each_branch_its_own(
    client: Client, server: FakeLLM
) -> None:
    from fanflow.batching import MIN_BRANCHES

    size = MIN_BRANCHES + 20
    subtasks = [{"key": f"q{index:03d}", "run": _llm(MINI, f"question {index}")} for index in range(size)]
    subtasks[7]["run"]["output_schema"] = {
        "type": "object",
        "required": ["nope"],
        "properties": {"nope": {"type": "integer"}},
    }
    subtasks[7]["run"]["prompt"] += ' [[fake:json={"other": 1}]]'
    handle = client.submit(_fanout(subtasks, failure={"policy": "best_effort"}))
    assert client.store.batch_size(handle.job_id) == client.settings.batch_size
    result = handle.wait(60)
    assert result.status is JobStatus.PARTIAL, result.error
    assert [o.key for o in result.outcomes] == [s["key"] for s in subtasks]
    assert result.flagged == ["q007"]
    assert result.outcome("q007").attempts == 1  # its own retries and judgement, as a single branch's
    assert sum(1 for o in result.outcomes if o.succeeded) == size - 1
    assert result.usage.calls == size
    assert handle.progress().merges == 1
