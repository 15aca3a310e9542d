"""``fanflow map``: the CLI with no broker configured (embedded Redis, in-process worker), stand-in agents.

What the command line says arrives verbatim in the agent's argv (quotes grouped, ``$(...)``, ``;``
and backticks never seen by a shell); one failing input makes the exit code 1; bad usage is 2.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from fanflow.errors import SpecError
from fanflow.executors import BranchInput
from fanflow.executors.agent import AgentExecutor
from fanflow.mapping import argv_template, build_map, input_keys, read_inputs
from fanflow.result import JobResult, JobStatus
from fanflow.spec import AgentRun
from tests.e2e.conftest import REPO_ROOT, run_cli

NASTY = 'Say "done" $(touch pwned) `touch pwned2` && exit 7; then write tests for {}'


def claude_argv(result: JobResult, key: str) -> list[str]:
    output = result.outcome(key).output
    assert isinstance(output, dict) and isinstance(output["result"], dict)
    argv = output["result"]["argv"]
    assert isinstance(argv, list)
    return [str(arg) for arg in argv]


def test_inputs_reach_the_command_verbatim_and_a_failure_is_retried_then_exits_1(tmp_path: Path) -> None:
    inputs = ["a.py", "b c.py", 'q"u{key}ote', "broken\nexit 3"]  # the stand-in obeys a line "exit 3"
    command = f"claude -p '{NASTY}' --output-format json"
    done = run_cli("map", "--fake-agents", "--command", command, "--output", "json", "--name", "verbatim",
                   "--retries", "1", *inputs, cwd=tmp_path)  # fmt: skip
    assert done.returncode == 1, done.stderr
    result = JobResult.model_validate_json(done.stdout)
    assert result.name == "verbatim" and result.status is JobStatus.PARTIAL
    keys = ["i001-a-py", "i002-b-c-py", "i003-q-u-key-ote", "i004-broken-exit-3"]
    assert [outcome.key for outcome in result.outcomes] == keys and result.flagged == keys[3:]
    for key, text in zip(keys, inputs, strict=True):
        assert claude_argv(result, key) == ["-p", NASTY.replace("{}", text), "--output-format", "json"]
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "pwned2").exists()
    assert (tmp_path / "tests" / "test_a.py").is_file()  # the commands ran in the current directory
    failed = result.outcome(keys[3])
    assert failed.attempts == 2 and failed.error is not None and failed.error.type == "AgentFailedError"
    assert isinstance(result.merged, dict) and result.merged["i001-a-py"]["exit_code"] == 0
    assert set(result.usage_by_model) == {"anthropic:claude-code"}


def test_the_table_names_the_failure(tmp_path: Path) -> None:
    listing = tmp_path / "inputs.txt"
    listing.write_text("first\n\nexit 3\n")
    done = run_cli("map", "--fake-agents", "--from", str(listing), "--command", "claude -p {}",
                   "--concurrency", "2", cwd=tmp_path)  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert "1 of 2 inputs succeeded" in done.stderr
    assert "AgentFailedError" in done.stderr and "exit code 3" in done.stderr


def test_worktree_gives_each_input_a_branch_and_leaves_the_checkout_alone(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    (repo / "src").mkdir(parents=True)
    env = {name: value for name, value in os.environ.items() if not name.startswith("GIT_")}
    env |= {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.invalid", "GIT_COMMITTER_NAME": "t",
            "GIT_COMMITTER_EMAIL": "t@example.invalid"}  # fmt: skip
    for args in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-q", "-m", "initial"]):
        (repo / "src" / "one.py").write_text("ONE = 1\n")
        subprocess.run(["git", *args], cwd=repo, env=env, check=True)
    done = run_cli("map", "--fake-agents", "--worktree", "-o", "json", "--command",
                   'claude -p "Write unit tests for {}." --output-format json', "src/one.py", "src/two.py",
                   cwd=repo / "src")  # fmt: skip
    assert done.returncode == 0, done.stderr
    result = JobResult.model_validate_json(done.stdout)
    for outcome, name in zip(result.outcomes, ("one", "two"), strict=True):
        assert isinstance(outcome.output, dict)
        assert outcome.output["changed_files"] == [f"src/tests/test_{name}.py"]
        assert str(outcome.output["git_branch"]).startswith("fanflow/i00")
    status = subprocess.run(
        ["git", "status", "--porcelain"], cwd=repo, env=env, capture_output=True, text=True
    )
    assert status.stdout == ""


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--command", "claude -p {}"], "no inputs"),
        (["--command", 'claude -p "unclosed', "x"], "No closing quotation"),
        (["--command", "   ", "x"], "the command is empty"),
        (["--command", "claude", "--from", "-", "x"], "not both"),
        (["--command", "claude", "--worktree", "x"], "not inside a git work tree"),
        (["--command", "claude", "--concurrency", "0", "x"], "Invalid value for '--concurrency'"),
    ],
)
def test_bad_usage_exits_2(tmp_path: Path, args: list[str], message: str) -> None:
    done = run_cli("map", *args, cwd=tmp_path, timeout=30)
    assert done.returncode == 2 and message in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


def test_the_template_keeps_every_other_brace_as_written() -> None:
    assert argv_template('claude -p "Write tests for {}"') == (
        ["claude", "-p", "Write tests for {input}"],
        False,
    )
    assert argv_template("cat") == (["cat", "{input}"], False)
    command = """jq '{name: .a}' {key} --x={prompt} {} '{"a": {context}}' {{}}"""
    fanout = build_map(command, ["x y"])
    subtask = fanout.subtasks[0]
    assert subtask.vars == {"lbrace": "{", "input": "x y"}
    assert isinstance(subtask.run, AgentRun) and subtask.run.workdir is None and not subtask.run.worktree
    branch = BranchInput(key=subtask.key, context=None, vars=subtask.vars)
    argv = AgentExecutor().prepare(subtask.run, branch).argv
    assert list(argv) == ["jq", "{name: .a}", "{key}", "--x={prompt}", "x y", '{"a": {context}}', "{x y}"]


def test_inputs_come_from_arguments_a_file_or_stdin(tmp_path: Path) -> None:
    assert read_inputs(["a", "b"], None, io.StringIO()) == ["a", "b"]
    assert read_inputs([], "-", io.StringIO("one\r\n\n  \ntwo words\n")) == ["one", "two words"]
    with pytest.raises(SpecError, match="holds no input"):
        read_inputs([], "-", io.StringIO("\n\n"))
    with pytest.raises(SpecError, match="cannot read"):
        read_inputs([], str(tmp_path / "missing.txt"), io.StringIO())
    keys = input_keys([f"src/api/{n}.ts" for n in range(1000)] + ["", "Ünïcode only!", "x" * 300])
    assert keys[0] == "i0001-src-api-0-ts" and keys[1000] == "i1001" and keys[1001] == "i1002-n-code-only"
    assert len(set(keys)) == len(keys) and max(len(key) for key in keys) <= 128
    assert json.dumps(keys).isascii()


def test_the_agents_example_runs_offline_and_leaves_the_checkout_alone(tmp_path: Path) -> None:
    """``fanflow run examples/agents.yaml --fake-agents`` at the root of a checkout (here: a copy)."""
    checkout = tmp_path / "checkout"
    shutil.copytree(REPO_ROOT / "examples" / "agents_project", checkout / "examples" / "agents_project",
                    ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
    shutil.copy(REPO_ROOT / "examples" / "agents.yaml", checkout / "examples" / "agents.yaml")
    env = {name: value for name, value in os.environ.items() if not name.startswith("GIT_")}
    env |= {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.invalid", "GIT_COMMITTER_NAME": "t",
            "GIT_COMMITTER_EMAIL": "t@example.invalid"}  # fmt: skip
    for args in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-q", "-m", "initial"]):
        subprocess.run(["git", *args], cwd=checkout, env=env, check=True)
    done = run_cli("run", "examples/agents.yaml", "--fake-agents", cwd=checkout)
    assert done.returncode == 0, done.stderr
    merged = json.loads(done.stdout)
    assert merged["merged"] == ["slugify", "temperature", "wordfreq", "intervals"] and not merged["conflicts"]
    assert "git branch -D fanflow/slugify-" in done.stderr and merged["branch"] in done.stderr
    git = ["git", "-C", str(checkout)]
    listing = [*git, "ls-tree", "-r", "--name-only", merged["branch"], "examples/agents_project/tests"]
    tree = subprocess.run(listing, capture_output=True, text=True, check=True).stdout.split()
    assert tree == [f"examples/agents_project/tests/test_{name}.py"
                    for name in ("intervals", "slugify", "temperature", "wordfreq")]  # fmt: skip
    status = subprocess.run([*git, "status", "--porcelain", "--ignored"], capture_output=True, text=True)
    assert status.stdout == ""
