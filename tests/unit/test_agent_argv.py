"""An AgentRun's argv template: substitutions stay inside their own argument; unknown names are errors."""

from __future__ import annotations

import pytest

from fanflow.errors import SpecError
from fanflow.executors import BranchInput
from fanflow.executors.agent import AGENT_EXECUTOR, AgentExecutor, check_agent_templates, render_agent_argv
from fanflow.executors.agent.argv import agent_kind, codex_model
from fanflow.executors.agent.process import agent_environment
from fanflow.result import Usage
from fanflow.spec import AgentRun

NASTY = 'it\'s "quoted" $(rm -rf ~); echo `id` && ls *\nsecond line {not a placeholder} { key } {1}'


def run(**fields: object) -> AgentRun:
    return AgentRun.model_validate({"argv": ["tool"], **fields})


def test_each_substitution_stays_inside_its_argument() -> None:
    spec = run(argv=["agent", "--name={key}", "Write tests for {file}", "{context}"])
    argv, prompt = render_agent_argv(spec, {"key": "b1", "file": NASTY, "context": {"a": [1, 2]}})
    assert argv == ["agent", "--name=b1", f"Write tests for {NASTY}", '{"a": [1, 2]}']
    assert prompt is None


def test_prompt_is_rendered_first_and_substituted_verbatim() -> None:
    spec = run(
        argv=["claude", "-p", "{prompt}", "--output-format", "json"], prompt="Fix {file} ({key}); keep {x}"
    )
    argv, prompt = render_agent_argv(spec, {"key": "k", "file": "a b.py", "x": "{key}"})
    assert prompt == "Fix a b.py (k); keep {key}"
    assert argv == ["claude", "-p", "Fix a b.py (k); keep {key}", "--output-format", "json"]


def test_other_braces_stay() -> None:
    spec = run(argv=["t", '{"json": true}', "{ key }", "{1}", "{a.b}", "{"])
    assert render_agent_argv(spec, {"key": "k"})[0] == spec.argv


def test_unknown_placeholder_is_a_spec_error_naming_it() -> None:
    with pytest.raises(SpecError, match=r"run\.argv\.2: unknown template variable \{topic\}") as caught:
        render_agent_argv(run(argv=["t", "{key}", "about {topic}"]), {"key": "k", "context": ""})
    assert caught.value.field == "run.argv.2"
    with pytest.raises(SpecError, match=r"run\.prompt: unknown template variable \{nope\}"):
        render_agent_argv(run(prompt="{nope}"), {"key": "k"})


def test_prompt_placeholder_needs_a_prompt() -> None:
    with pytest.raises(SpecError, match="needs the run's 'prompt'"):
        render_agent_argv(run(argv=["t", "{prompt}"]), {"key": "k"})


def test_check_agent_templates_names_the_submit_path() -> None:
    spec = run(argv=["t", "{key}", "{missing}"])
    with pytest.raises(SpecError) as caught:
        check_agent_templates(spec, {"context", "key"}, field="subtasks.3.run")
    assert caught.value.field == "subtasks.3.run.argv.2"
    check_agent_templates(run(argv=["t", "{allowed_tools}", "{prompt}"], prompt="p"), {"key"}, field="x")


def test_nul_byte_is_refused() -> None:
    with pytest.raises(SpecError, match="NUL"):
        render_agent_argv(run(argv=["t", "{v}"]), {"v": "a\0b"})


def test_allowed_tools_expand_and_are_appended_for_claude() -> None:
    tools = ["Read", "Edit", "Bash(git diff:*)"]
    argv, _ = render_agent_argv(run(argv=["/usr/local/bin/claude", "-p", "hi"], allowed_tools=tools), {})
    assert argv[-2:] == ["--allowedTools", "Read,Edit,Bash(git diff:*)"]
    argv, _ = render_agent_argv(
        run(argv=["claude", "--allowedTools", "{allowed_tools}"], allowed_tools=tools), {}
    )
    assert argv == ["claude", "--allowedTools", "Read,Edit,Bash(git diff:*)"]
    argv, _ = render_agent_argv(run(argv=["codex", "exec", "x"], allowed_tools=tools), {})
    assert argv == ["codex", "exec", "x"]
    argv, _ = render_agent_argv(run(argv=["claude", "-p", "x"]), {})
    assert argv == ["claude", "-p", "x"]


def test_kind_and_codex_model() -> None:
    assert agent_kind(["/opt/claude"]) == "claude"
    assert agent_kind(["codex", "exec"]) == "codex"
    assert agent_kind(["python", "fake_claude.py"]) is None
    assert codex_model(["codex", "exec", "-m", "gpt-5", "hi"]) == "gpt-5"
    assert codex_model(["codex", "exec", "--model=o3", "hi"]) == "o3"
    assert codex_model(["codex", "-c", 'model="gpt-5-mini"', "hi"]) == "gpt-5-mini"
    assert codex_model(["codex", "exec", "hi"]) is None


def test_prepare_uses_branch_variables_and_the_tighter_timeout() -> None:
    spec = run(argv=["t", "{key}", "{topic}", "{context}"], timeout_s=30)
    branch = BranchInput(key="b-2", context=None, vars={"topic": "x; y"}, timeout_s=10)
    prepared = AGENT_EXECUTOR.prepare(spec, branch)
    assert prepared.argv == ("t", "b-2", "x; y", "")
    assert prepared.timeout_s == 10
    assert (
        AGENT_EXECUTOR.prepare(spec, BranchInput(key="b", context="c", vars={"topic": "t"})).timeout_s == 30
    )


def test_protocol_answers() -> None:
    executor = AgentExecutor()
    spec = run()
    prepared = executor.prepare(spec, BranchInput(key="k", context=None))
    assert executor.estimate(prepared) == Usage()
    assert executor.limit_keys(spec) == []
    assert executor.retries_rejections is False


def test_environment_passes_only_the_base_and_named_variables() -> None:
    source = {"PATH": "/bin", "HOME": "/h", "SECRET_TOKEN": "s3cr3t", "WANTED": "yes", "LANG": "C.UTF-8"}
    expected = {"PATH": "/bin", "HOME": "/h", "LANG": "C.UTF-8", "WANTED": "yes"}
    assert agent_environment(["WANTED", "ABSENT"], source) == expected
