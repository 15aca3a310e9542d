"""Agent fan-outs through the real in-process worker: worktrees per branch, then ``git_merge``.

The branches run fanflow's stand-in ``claude`` (``fanflow/dev/agents/claude``, named by absolute
path so the worker's threads need no PATH change); its basename is the real CLI's, so its JSON is
read as Claude Code's.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from fanflow.client import Client
from fanflow.dev.agents import AGENTS_DIR
from fanflow.result import JobStatus, OutcomeStatus
from fanflow.spec import FanOut, GitMerge
from tests.gitrepo import sh_git

CLAUDE = str(AGENTS_DIR / "claude")
MODULES = ("alpha", "beta", "gamma", "delta")


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A small project: four modules under ``src/``, committed on ``main``."""
    path = tmp_path / "project"
    (path / "src").mkdir(parents=True)
    sh_git(path, "init", "-q", "-b", "main")
    for name in MODULES:
        (path / "src" / f"{name}.py").write_text(f"def {name}() -> str:\n    return {name!r}\n")
    sh_git(path, "add", "-A")
    sh_git(path, "commit", "-q", "-m", "initial")
    return path


def agent_fanout(repo: Path, prompts: dict[str, str], **fields: Any) -> FanOut:
    run = {"kind": "agent", "repo": str(repo), "ref": "main", "worktree": True, "timeout_s": 60,
           "argv": [CLAUDE, "-p", "{prompt}", "--output-format", "json"], "prompt": "{task}"}  # fmt: skip
    subtasks = [{"key": key, "vars": {"task": task}, "run": run} for key, task in prompts.items()]
    spec = {"name": "agent fan-out", "subtasks": subtasks, "merge": {"strategy": "git_merge"}, **fields}
    return FanOut.model_validate(spec)


def test_four_agents_in_worktrees_are_merged_in_declared_order(client: Client, repo: Path) -> None:
    head = sh_git(repo, "rev-parse", "HEAD").strip()
    prompts = {name: f"Write unit tests for src/{name}.py." for name in MODULES}
    fanout = agent_fanout(repo, prompts)
    assert (
        isinstance(fanout.merge, GitMerge) and fanout.merge.repo == str(repo) and fanout.merge.ref == "main"
    )
    branch = fanout.merge.branch
    assert branch is not None and branch.startswith("fanflow/merge-agent-fan-out-")
    result = client.submit(fanout).wait(60)
    assert result.status is JobStatus.SUCCEEDED, result.error
    for name, outcome in zip(MODULES, result.outcomes, strict=True):
        output = outcome.output
        assert isinstance(output, dict)
        assert output["changed_files"] == [f"src/tests/test_{name}.py"]
        assert output["git_branch"].startswith(f"fanflow/{name}-") and output["worktree"] is None
        assert output["result"]["result"] == f"wrote src/tests/test_{name}.py"
        assert outcome.usage.input_tokens == 12 + 100 + 20 and outcome.usage.output_tokens == 34
        assert outcome.usage.cached_tokens == 100 and outcome.usage.cost_usd == pytest.approx(0.0123)
    assert set(result.usage_by_model) == {"anthropic:claude-code"}
    assert result.usage_by_model["anthropic:claude-code"].calls == 4
    assert result.usage.cost_usd == pytest.approx(4 * 0.0123)
    merged = result.merged
    assert isinstance(merged, dict)
    assert merged["branch"] == branch and merged["base"] == head
    assert merged["merged"] == list(MODULES) and merged["conflicts"] == [] and merged["skipped"] == []
    assert sh_git(repo, "rev-parse", branch).strip() == merged["head"]
    log = sh_git(repo, "log", "--first-parent", "--reverse", "--format=%s", branch).splitlines()
    assert [line.split(" ")[2] for line in log[1:]] == list(MODULES)  # "fanflow: merge <key> (...)"
    tree = sh_git(repo, "ls-tree", "-r", "--name-only", branch).split()
    assert sorted(tree) == sorted(
        [f"src/{n}.py" for n in MODULES] + [f"src/tests/test_{n}.py" for n in MODULES]
    )
    # The base repository: same HEAD, clean work tree, no worktree left, no merge in progress.
    assert sh_git(repo, "rev-parse", "HEAD").strip() == head
    assert sh_git(repo, "status", "--porcelain") == ""
    assert sh_git(repo, "worktree", "list", "--porcelain").count("worktree ") == 1
    assert not (repo / ".git" / "MERGE_HEAD").exists()


def test_a_conflicting_agent_is_reported_and_does_not_fail_the_job(client: Client, repo: Path) -> None:
    prompts = {
        "first": "write src/alpha.py: ALPHA = 'first'\nwrite notes/first.md: first",
        "second": "write notes/second.md: second",
        "third": "write src/alpha.py: ALPHA = 'third'",
        "failing": "write src/beta.py: never merged\nexit 2",
    }
    fanout = agent_fanout(repo, prompts, failure={"policy": "best_effort"})
    result = client.submit(fanout).wait(60)
    assert result.status is JobStatus.PARTIAL and result.flagged == ["failing"]
    failing = result.outcome("failing")
    assert failing.status is OutcomeStatus.FAILED and failing.error is not None
    assert "exit code 2" in failing.error.message
    merged = result.merged
    assert isinstance(merged, dict)
    assert merged["merged"] == ["first", "second"]
    assert merged["conflicts"] == [{"key": "third", "files": ["src/alpha.py"], "with": ["first"]}]
    assert sh_git(repo, "show", f"{merged['branch']}:src/alpha.py") == "ALPHA = 'first'\n"
    assert sh_git(repo, "status", "--porcelain") == ""


def test_a_spent_budget_stops_the_agents_not_yet_started(client: Client, repo: Path) -> None:
    prompts = {name: f"write {name}.txt: {name}" for name in MODULES}  # each reports $0.0123
    fanout = agent_fanout(repo, prompts, failure={"policy": "best_effort"}, max_concurrency=1,
                          budget={"max_cost_usd": 0.02})  # fmt: skip
    result = client.submit(fanout).wait(60)
    ran = [o.key for o in result.outcomes if o.status is OutcomeStatus.SUCCEEDED]
    stopped = [o for o in result.outcomes if o.status is OutcomeStatus.CANCELLED]
    assert len(ran) == 2 and result.budget_exhausted
    assert [o.error.message for o in stopped if o.error] == ["stopped: budget exhausted"] * 2


def test_cancelling_the_job_stops_a_running_agent_and_its_grandchild(
    client: Client, repo: Path, tmp_path: Path
) -> None:
    pidfile = tmp_path / "grandchild.pid"
    fanout = agent_fanout(
        repo, {"long": f"grandchild {pidfile}\nsleep 60"}, failure={"policy": "best_effort"}
    )
    handle = client.submit(fanout)
    deadline = time.monotonic() + 20
    while not pidfile.exists() or not pidfile.read_text():
        assert time.monotonic() < deadline, "the agent never started"
        time.sleep(0.05)
    grandchild = int(pidfile.read_text())
    cancelled_at = time.monotonic()
    handle.cancel()
    result = handle.wait(30)
    assert time.monotonic() - cancelled_at < 10  # not the 60 s the agent meant to sleep
    assert result.status is JobStatus.CANCELLED
    assert result.outcome("long").status in (OutcomeStatus.CANCELLED, OutcomeStatus.FAILED)
    assert _gone(grandchild)  # the whole process group was stopped


def _gone(pid: int) -> bool:
    """No such process, or a zombie nobody reaped yet."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat[stat.rfind(")") + 2] in "ZX"
