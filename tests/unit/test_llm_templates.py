"""Prompt templates, request building, feedback requests and estimates of model calls."""

from __future__ import annotations

from typing import Any

import pytest

from fanflow.errors import ConfigError, SpecError
from fanflow.executors.llm import (
    LLMRequest,
    build_request,
    check_call_templates,
    configure,
    estimate,
    placeholders,
    render,
    with_feedback,
)
from fanflow.spec import LLMCall, Message, ToolSpec


@pytest.fixture(autouse=True)
def _no_declared_providers() -> Any:
    configure()
    yield
    configure()


# --- placeholders and render ----------------------------------------------------------------------


def test_placeholders_in_order_each_once() -> None:
    text = "{b} and {a}, then {b} again; {_x1} {A_2}"
    assert placeholders(text) == ["b", "a", "_x1", "A_2"]


@pytest.mark.parametrize(
    "text",
    [
        '{"a": 1, "b": [1, 2]}',
        "{ x }",
        "{1}",
        "{a.b}",
        "{a-b}",
        "{}",
        "a lone { brace",
        "and a closing } one",
        "{x y}",
        "{1abc}",
    ],
)
def test_only_identifiers_are_placeholders(text: str) -> None:
    assert placeholders(text) == []
    assert render(text, {}) == text


def test_doubled_braces_are_not_an_escape() -> None:
    assert placeholders("{{x}}") == ["x"]
    assert render("{{x}}", {"x": "X"}) == "{X}"


def test_json_braces_stay_and_identifiers_are_filled() -> None:
    text = 'Topic: {topic}\nAnswer as {"summary": "...", "tags": [..]} about {topic}.'
    assert render(text, {"topic": "cats"}) == (
        'Topic: cats\nAnswer as {"summary": "...", "tags": [..]} about cats.'
    )


def test_strings_as_is_others_as_json() -> None:
    variables = {"s": 'he said "hi"', "n": 3, "f": 0.5, "b": True, "none": None, "obj": {"é": [1, "ü"]}}
    assert render("{s}|{n}|{f}|{b}|{none}|{obj}", variables) == (
        'he said "hi"|3|0.5|true|null|{"é": [1, "ü"]}'
    )


def test_substituted_values_are_not_rendered_again() -> None:
    assert render("{a}", {"a": "{b}", "b": "no"}) == "{b}"


def test_unknown_name_is_a_key_error_naming_it() -> None:
    with pytest.raises(KeyError) as info:
        render("fine {known} but {missing}", {"known": 1})
    assert info.value.args == ("missing",)


def test_text_without_braces_is_returned_as_is() -> None:
    text = "no placeholders at all"
    assert render(text, {}) is text


# --- check_call_templates -------------------------------------------------------------------------


def test_check_passes_when_every_name_is_known() -> None:
    call = LLMCall(
        model="openai:gpt-4o-mini",
        system="You are {role}.",
        prompt='Write about {topic} as {"json": true}',
    )
    check_call_templates(call, {"role", "topic", "context"}, field="subtasks.0.run")


def test_check_names_the_prompt_field_and_the_known_variables() -> None:
    call = LLMCall(model="openai:gpt-4o-mini", prompt="About {topic} for {key}")
    with pytest.raises(SpecError) as info:
        check_call_templates(call, ["key", "context"], field="subtasks.2.run")
    assert info.value.field == "subtasks.2.run.prompt"
    assert str(info.value) == (
        "subtasks.2.run.prompt: unknown template variable {topic}; known: context, key"
    )


def test_check_names_the_system_field() -> None:
    call = LLMCall(model="openai:gpt-4o-mini", system="{persona}", prompt="hi")
    with pytest.raises(SpecError) as info:
        check_call_templates(call, [], field="merge.run")
    assert info.value.field == "merge.run.system"
    assert "known: (none)" in str(info.value)


def test_check_names_the_message_index_and_every_unknown_name() -> None:
    call = LLMCall(
        model="anthropic:claude-haiku-4-5",
        messages=[
            Message(role="system", content="fine {context}"),
            Message(role="user", content="{a} and {b} and {context}"),
        ],
    )
    with pytest.raises(SpecError) as info:
        check_call_templates(call, {"context"}, field="subtasks.1.run")
    assert info.value.field == "subtasks.1.run.messages.1.content"
    assert "unknown template variables {a}, {b}" in str(info.value)


# --- build_request --------------------------------------------------------------------------------


def test_prompt_becomes_one_user_message() -> None:
    call = LLMCall(
        model="openai:gpt-4o-mini",
        system="Be {tone}.",
        prompt="Summarize {context}",
        max_tokens=50,
        temperature=0.3,
        tools=[ToolSpec(name="lookup")],
        output_schema={"type": "object"},
    )
    request = build_request(call, {"tone": "brief", "context": {"k": 1}}, timeout_s=12.5)
    assert request.model_id == "openai:gpt-4o-mini"
    assert request.provider.name == "openai" and request.provider.api == "openai"
    assert request.model == "gpt-4o-mini"
    assert request.system == "Be brief."
    assert request.messages == ({"role": "user", "content": 'Summarize {"k": 1}'},)
    assert (request.max_tokens, request.temperature, request.timeout_s) == (50, 0.3, 12.5)
    assert [tool.name for tool in request.tools] == ["lookup"]
    assert request.output_schema == {"type": "object"}


def test_system_messages_join_the_system_prompt() -> None:
    call = LLMCall(
        model="anthropic:claude-sonnet-4-5",
        system="First.",
        messages=[
            Message(role="system", content="Second {x}."),
            Message(role="user", content="Q {x}"),
            Message(role="assistant", content="A"),
            Message(role="system", content="Third."),
            Message(role="user", content="Q2"),
        ],
    )
    request = build_request(call, {"x": "X"})
    assert request.system == "First.\n\nSecond X.\n\nThird."
    assert request.messages == (
        {"role": "user", "content": "Q X"},
        {"role": "assistant", "content": "A"},
        {"role": "user", "content": "Q2"},
    )


def test_build_request_names_an_unknown_variable() -> None:
    call = LLMCall(model="openai:gpt-4o-mini", prompt="{nope}")
    with pytest.raises(SpecError, match=r"prompt: unknown template variable \{nope\}"):
        build_request(call, {"context": None})


def test_only_system_messages_is_an_error() -> None:
    call = LLMCall(model="openai:gpt-4o-mini", messages=[Message(role="system", content="s")])
    with pytest.raises(SpecError, match="at least one user or assistant message"):
        build_request(call, {})


def test_unknown_provider_is_a_config_error() -> None:
    call = LLMCall(model="nosuch:model", prompt="hi")
    with pytest.raises(ConfigError, match=r"unknown model provider 'nosuch'.*FANFLOW_PROVIDERS"):
        build_request(call, {})


def test_builtin_base_urls_are_read_when_building(monkeypatch: pytest.MonkeyPatch) -> None:
    call = LLMCall(model="anthropic:claude-haiku-4-5", prompt="hi")
    monkeypatch.delenv("ANTHROPIC_BASE_URL", raising=False)
    assert build_request(call, {}).provider.base_url == "https://api.anthropic.com"
    monkeypatch.setenv("ANTHROPIC_BASE_URL", "http://127.0.0.1:9/")
    assert build_request(call, {}).provider.base_url == "http://127.0.0.1:9"


def test_declared_provider() -> None:
    configure(
        providers={"vllm": {"api": "openai", "base_url": "http://h:8000/v1/", "api_key_env": "VLLM_KEY"}}
    )
    request = build_request(LLMCall(model="vllm:meta/llama-3:8b", prompt="hi"), {})
    assert request.provider.base_url == "http://h:8000/v1"
    assert request.provider.api_key_env == "VLLM_KEY"
    assert request.model == "meta/llama-3:8b"


def test_configure_refuses_bad_declarations() -> None:
    with pytest.raises(ConfigError, match=r"providers\.x"):
        configure(providers={"x": {"api": "grpc", "base_url": "http://h"}})
    with pytest.raises(ConfigError, match="provider:model"):
        configure(prices={"gpt-4o": {"input": 1, "output": 2}})


# --- with_feedback and estimate -------------------------------------------------------------------


def _request(**changes: Any) -> LLMRequest:
    call = LLMCall(model="openai:gpt-4o-mini", system="sys", prompt="x" * 400, max_tokens=100)
    request = build_request(call, {})
    return request if not changes else build_request(call.model_copy(update=changes), {})


def test_feedback_adds_the_rejected_answer_and_the_reasons() -> None:
    original = _request()
    retry = with_feedback(original, '{"bad": 1}', "missing field 'name'")
    assert retry.messages[: len(original.messages)] == original.messages
    assert retry.messages[-2] == {"role": "assistant", "content": '{"bad": 1}'}
    assert retry.messages[-1]["role"] == "user"
    assert retry.messages[-1]["content"].startswith(
        "Your previous answer was rejected: missing field 'name'\nAnswer again"
    )
    assert retry.system == original.system and retry.model == original.model


def test_feedback_never_grows_past_one_rejection() -> None:
    original = _request()
    first = with_feedback(original, "one", "r1")
    second = with_feedback(original, "two", "r2")
    assert len(first.messages) == len(second.messages) == len(original.messages) + 2
    assert original.messages == ({"role": "user", "content": "x" * 400},)


def test_feedback_without_an_answer_adds_only_the_reasons() -> None:
    original = _request()
    for previous in (None, ""):
        retry = with_feedback(original, previous, "empty")
        assert len(retry.messages) == len(original.messages) + 1
        assert retry.messages[-1]["role"] == "user"


def test_estimate_counts_the_prompt_and_max_tokens() -> None:
    usage = estimate(_request())
    assert usage.output_tokens == 100
    assert 100 <= usage.input_tokens <= 130  # 403 characters ~ 101 tokens, plus a small overhead
    assert usage.calls == 1
    # gpt-4o-mini: 0.15 / 0.60 per million
    assert usage.cost_usd == pytest.approx((usage.input_tokens * 0.15 + 100 * 0.60) / 1e6)


def test_estimate_counts_tools_and_schema() -> None:
    plain = estimate(_request())
    schema = {"type": "object", "properties": {"a": {"type": "string", "description": "y" * 400}}}
    richer = estimate(_request(output_schema=schema, tools=[ToolSpec(name="t", parameters=schema)]))
    assert richer.input_tokens > plain.input_tokens + 200
