"""Spec validation: every bad field is named, nothing half-valid gets through."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from fanflow.errors import SpecError
from fanflow.spec import FanOut, KeyMerge, LLMCall, Quorum, RetryPolicy, validate_fanout
from fanflow.spec_files import load_spec


def _branch(key: str, **extra: Any) -> dict[str, Any]:
    return {"key": key, "run": {"kind": "python", "function": "tests.callables:echo"}, **extra}


def _spec(**overrides: Any) -> dict[str, Any]:
    return {"name": "t", "subtasks": [_branch("a"), _branch("b")], **overrides}


def test_minimal_spec_gets_safe_defaults() -> None:
    spec = validate_fanout(_spec())
    assert spec.merge.strategy == "concatenate"
    assert spec.failure.policy == "all_or_nothing"
    assert [s.key for s in spec.subtasks] == ["a", "b"]


def test_duplicate_keys_are_rejected_naming_both_places() -> None:
    with pytest.raises(SpecError) as info:
        validate_fanout(_spec(subtasks=[_branch("a"), _branch("b"), _branch("a")]))
    assert "duplicate key 'a' at subtasks.2.key" in str(info.value)
    assert "subtasks.0.key" in str(info.value)


def test_empty_fanout_is_rejected() -> None:
    with pytest.raises(SpecError, match="subtasks"):
        validate_fanout(_spec(subtasks=[]))


@pytest.mark.parametrize("path", ["tests.callables.echo", "not a path", "mod:", ":fn", "a..b:c"])
def test_bad_import_paths_are_rejected_naming_the_field(path: str) -> None:
    with pytest.raises(SpecError) as info:
        validate_fanout(_spec(subtasks=[_branch("a", run={"kind": "python", "function": path})]))
    assert info.value.field == "subtasks.0.run.function"
    assert "package.module:function" in str(info.value)


def test_unknown_fields_are_rejected_at_any_depth() -> None:
    with pytest.raises(SpecError) as info:
        validate_fanout(
            _spec(subtasks=[_branch("a", retyr={"attempts": 2})], merge={"strategy": "key_merge", "x": 1})
        )
    message = str(info.value)
    assert "subtasks.0.retyr: Extra inputs are not permitted" in message
    assert "merge.x: Extra inputs are not permitted" in message


def test_unknown_kind_and_strategy_name_the_discriminator() -> None:
    with pytest.raises(SpecError, match=r"subtasks\.0\.run"):
        validate_fanout(_spec(subtasks=[{"key": "a", "run": {"kind": "shell", "cmd": "ls"}}]))
    with pytest.raises(SpecError, match=r"merge"):
        validate_fanout(_spec(merge={"strategy": "zip"}))


def test_llm_and_agent_specs_validate() -> None:
    spec = validate_fanout(
        _spec(
            subtasks=[
                {
                    "key": "m",
                    "run": {"kind": "llm", "model": "openai:gpt-4o-mini", "prompt": "Angle: {context}"},
                },
                {"key": "g", "run": {"kind": "agent", "argv": ["claude", "-p", "{prompt}"]}},
            ],
            merge={"strategy": "synthesize", "run": {"model": "openai:gpt-4o", "prompt": "{results}"}},
        )
    )
    assert isinstance(spec.subtasks[0].run, LLMCall)
    with pytest.raises(SpecError, match="exactly one of 'prompt' or 'messages'"):
        validate_fanout(_spec(subtasks=[{"key": "m", "run": {"kind": "llm", "model": "openai:x"}}]))
    with pytest.raises(SpecError, match=r"subtasks\.0\.run\.model"):
        validate_fanout(
            _spec(subtasks=[{"key": "m", "run": {"kind": "llm", "model": "gpt4", "prompt": "p"}}])
        )


def test_quorum_needs_a_reachable_threshold() -> None:
    with pytest.raises(SpecError, match="min_succeeded"):
        validate_fanout(_spec(failure={"policy": "quorum"}))
    with pytest.raises(SpecError, match="only 2 subtasks"):
        validate_fanout(_spec(failure={"policy": "quorum", "min_succeeded": 3}))
    assert isinstance(
        validate_fanout(_spec(failure={"policy": "quorum", "min_fraction": 0.5})).failure, Quorum
    )


def test_key_merge_conflict_rule_is_checked() -> None:
    with pytest.raises(SpecError, match=r"merge\.on_conflict"):
        validate_fanout(_spec(merge={"strategy": "key_merge", "on_conflict": "newest"}))
    assert isinstance(validate_fanout(_spec(merge={"strategy": "key_merge", "field": "id"})).merge, KeyMerge)


def test_specs_are_frozen() -> None:
    spec = validate_fanout(_spec())
    with pytest.raises(Exception, match="frozen"):
        spec.name = "other"  # type: ignore[misc]


def test_yaml_and_json_files_load_the_same_spec(tmp_path: Path) -> None:
    data = _spec(context={"topic": "x"}, failure={"policy": "best_effort"})
    (tmp_path / "job.json").write_text(json.dumps(data))
    yaml_text = (
        "name: t\ncontext: {topic: x}\nfailure: {policy: best_effort}\nsubtasks:\n"
        "  - {key: a, run: {kind: python, function: 'tests.callables:echo'}}\n"
        "  - {key: b, run: {kind: python, function: 'tests.callables:echo'}}\n"
    )
    (tmp_path / "job.yaml").write_text(yaml_text)
    assert load_spec(tmp_path / "job.json") == load_spec(tmp_path / "job.yaml") == FanOut.model_validate(data)


def test_bad_files_give_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="cannot read spec file"):
        load_spec(tmp_path / "absent.yaml")
    (tmp_path / "bad.yaml").write_text("name: [unclosed\n")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_spec(tmp_path / "bad.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(SpecError, match="must be a mapping"):
        load_spec(tmp_path / "list.yaml")


def test_retry_backoff_is_exponential_capped_and_jittered() -> None:
    policy = RetryPolicy(attempts=5, backoff_s=1, max_backoff_s=5)
    assert [policy.delay_s(n, 0.999999) for n in (1, 2, 3, 4)] == pytest.approx([1, 2, 4, 5], rel=1e-3)
    assert policy.delay_s(3, 0.0) == 0.0
    assert RetryPolicy(backoff_s=1, jitter=False).delay_s(2, 0.0) == 2.0
