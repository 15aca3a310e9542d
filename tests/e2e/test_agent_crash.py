"""A worker SIGKILLed in the middle of an agent run: the next worker start cleans up its worktree."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from fanflow.client import Client
from fanflow.config import Settings
from fanflow.dev.agents import AGENTS_DIR
from fanflow.spec import FanOut
from tests.e2e.conftest import StartWorker, worker_env
from tests.gitrepo import sh_git

pytestmark = pytest.mark.e2e


def _worktrees(repo: Path) -> list[str]:
    lines = sh_git(repo, "worktree", "list", "--porcelain").splitlines()
    return [line.split(" ", 1)[1] for line in lines if line.startswith("worktree ")][1:]


@pytest.mark.timeout(120)
def test_a_worker_killed_mid_agent_leaves_no_worktree_after_the_next_worker_start(
    e2e_redis_url: str, key_prefix: str, start_worker: StartWorker, tmp_path: Path
) -> None:
    repo = tmp_path / "project"
    repo.mkdir()
    sh_git(repo, "init", "-q", "-b", "main")
    (repo / "README.md").write_text("# project\n")
    sh_git(repo, "add", "-A")
    sh_git(repo, "commit", "-q", "-m", "initial")
    env = worker_env(e2e_redis_url, key_prefix) | {"FANFLOW_REPO_CACHE": str(tmp_path / "cache" / "repos")}
    first = start_worker("w0", env=env, queues="fanflow.agent,fanflow.control", concurrency=2)
    first.wait_ready()
    client = Client.from_settings(Settings(key_prefix=key_prefix).with_redis(e2e_redis_url))
    run = {"kind": "agent", "repo": str(repo), "ref": "main", "worktree": True,
           "argv": [str(AGENTS_DIR / "claude"), "-p", "{prompt}", "--output-format", "json"],
           "prompt": "write notes.txt: half done\nsleep 60"}  # fmt: skip
    client.submit(FanOut.model_validate({"name": "crash", "subtasks": [{"key": "slow", "run": run}]}))
    deadline = time.monotonic() + 30
    while not any(Path(path, "notes.txt").exists() for path in _worktrees(repo)):
        assert time.monotonic() < deadline, "the agent never started"
        time.sleep(0.1)
    [left] = _worktrees(repo)
    first.kill()
    time.sleep(0.5)
    assert _worktrees(repo) == [left]  # the dead worker could not clean up
    second = start_worker("w1", env=env, queues="fanflow.control", concurrency=2)  # agents not even consumed
    second.wait_ready()
    deadline = time.monotonic() + 20
    while _worktrees(repo):
        assert time.monotonic() < deadline, f"still there: {_worktrees(repo)}"
        time.sleep(0.2)
    assert not Path(left).exists()
    branches = sh_git(repo, "branch", "--list", "fanflow/*").split()
    assert len(branches) == 1  # the dead run's branch is kept, with what it had written
    assert sh_git(repo, "show", f"{branches[0]}:notes.txt") == "half done\n"
    assert sh_git(repo, "status", "--porcelain") == ""
    # The agent itself (a process group of its own, so the worker's SIGKILL missed it) was stopped.
    assert not [line for line in subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
                .splitlines() if "sleep 60" in line and str(AGENTS_DIR) in line]  # fmt: skip
