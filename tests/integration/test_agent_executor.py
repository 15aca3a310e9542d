"""The agent executor driven directly: real git repositories, real processes, the stand-in agents.

``claude`` and ``codex`` on the test's own bin directory are small wrappers around fanflow's
stand-in agents (``fanflow/dev/agents``), so argv[0]'s basename is what the real CLIs' would be.
No Redis and no Celery here: these tests call prepare/execute themselves.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from fanflow.dev.agents import AGENTS_DIR
from fanflow.errors import BranchTimeoutError, RateLimitedError
from fanflow.executors import BranchInput, Execution
from fanflow.executors.agent import (
    AgentExecutor,
    AgentFailedError,
    AgentRateLimitedError,
    AgentTimeoutError,
    WorktreeManager,
    cleanup_worktrees,
)
from fanflow.executors.agent.process import BASE_ENV
from fanflow.executors.agent.worktrees import LOCK_NAME, repo_lock
from fanflow.executors.llm.pricing import cost_usd
from fanflow.spec import AgentRun
from tests.gitrepo import sh_git

AGENTS = AGENTS_DIR
CLAUDE_JSON = ["--output-format", "json"]


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A repository on ``main`` with two committed files."""
    path = tmp_path / "repo"
    path.mkdir()
    sh_git(path, "init", "-q", "-b", "main")
    (path / "README.md").write_text("# project\n")
    (path / "src").mkdir()
    (path / "src" / "app.py").write_text("print('hi')\n")
    sh_git(path, "add", "-A")
    sh_git(path, "commit", "-q", "-m", "initial")
    return path


@pytest.fixture
def bin_dir(tmp_path: Path) -> Path:
    """``claude`` and ``codex`` wrappers running the stand-in agents."""
    path = tmp_path / "bin"
    path.mkdir()
    for name in ("claude", "codex"):
        wrapper = path / name
        script = AGENTS / name
        wrapper.write_text(
            f"#!{sys.executable}\nimport runpy\nrunpy.run_path({str(script)!r}, run_name='__main__')\n"
        )
        wrapper.chmod(0o755)
    return path


@pytest.fixture
def executor(tmp_path: Path) -> AgentExecutor:
    return AgentExecutor(WorktreeManager(cache_dir=tmp_path / "cache", fetch_ttl_s=0))


def claude(bin_dir: Path, *extra: str) -> list[str]:
    return [str(bin_dir / "claude"), "-p", "{prompt}", *CLAUDE_JSON, *extra]


def execute(
    executor: AgentExecutor, key: str = "b1", vars: dict[str, Any] | None = None, **run: Any
) -> Execution:
    spec = AgentRun.model_validate(run)
    return executor.execute(executor.prepare(spec, BranchInput(key=key, context="ctx", vars=vars or {})))


def pid_gone(pid: int) -> bool:
    """No such process, or a zombie nobody reaped yet."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat[stat.rfind(")") + 2] in "ZX"


def wait_for(predicate: Callable[[], bool], timeout_s: float = 3.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def test_worktree_run_commits_on_a_kept_branch_and_leaves_the_repo_alone(
    executor: AgentExecutor, repo: Path, bin_dir: Path
) -> None:
    head = sh_git(repo, "rev-parse", "HEAD").strip()
    prompt = "write hello.txt: hi\nappend README.md: more\ndelete src/app.py"
    out = execute(executor, repo=str(repo), worktree=True, argv=claude(bin_dir), prompt=prompt)
    output = out.output
    assert output["exit_code"] == 0
    assert output["changed_files"] == ["README.md", "hello.txt", "src/app.py"]
    assert "+hi" in output["diff"] and "+more" in output["diff"] and "-print('hi')" in output["diff"]
    assert output["worktree"] is None
    branch = output["git_branch"]
    assert branch.startswith("fanflow/b1-")
    ran_in = Path(output["result"]["cwd"])
    assert ran_in.name == branch.removeprefix("fanflow/") and not ran_in.exists()
    # The branch carries the work, committed by fanflow on top of the base commit.
    assert sh_git(repo, "show", f"{branch}:hello.txt") == "hi\n"
    assert (
        sh_git(repo, "log", "-1", "--format=%an <%ae> %P", branch).strip()
        == f"fanflow <fanflow@localhost> {head}"
    )
    assert sh_git(repo, "rev-parse", branch).strip() == output["commit"]
    # The base repository: same HEAD, clean, no worktree left.
    assert sh_git(repo, "rev-parse", "HEAD").strip() == head
    assert sh_git(repo, "status", "--porcelain") == ""
    assert sh_git(repo, "worktree", "list", "--porcelain").count("worktree ") == 1
    assert out.model == "anthropic:claude-code"
    assert out.usage.input_tokens == 12 + 100 + 20 and out.usage.cached_tokens == 100
    assert out.usage.cost_usd == pytest.approx(0.0123)
    again = execute(executor, repo=str(repo), worktree=True, argv=claude(bin_dir), prompt="write x: y")
    assert again.output["git_branch"] != branch  # one branch per attempt


def test_concurrent_branches_are_isolated(executor: AgentExecutor, repo: Path, bin_dir: Path) -> None:
    def one(index: int) -> Execution:
        prompt = f"write own_{index}.txt: {index}\nappend README.md: line from {index}"
        return execute(
            executor, key=f"k{index}", repo=str(repo), worktree=True, argv=claude(bin_dir), prompt=prompt
        )

    with ThreadPoolExecutor(6) as pool:
        outputs = [execution.output for execution in pool.map(one, range(6))]
    for index, output in enumerate(outputs):
        assert output["changed_files"] == ["README.md", f"own_{index}.txt"]
        assert f"line from {index}" in output["diff"]
        assert all(f"line from {other}" not in output["diff"] for other in range(6) if other != index)
    assert len({output["git_branch"] for output in outputs}) == 6
    assert sh_git(repo, "status", "--porcelain") == ""


def test_sixteen_worktrees_at_once_never_trip_on_git_locks(tmp_path: Path, repo: Path) -> None:
    manager = WorktreeManager(cache_dir=tmp_path / "cache")
    with ThreadPoolExecutor(16) as pool:
        worktrees = list(pool.map(lambda i: manager.create(str(repo), "HEAD", f"w{i}"), range(16)))
    assert len({w.path for w in worktrees}) == 16 and len({w.branch for w in worktrees}) == 16
    assert all((w.path / "src" / "app.py").read_text() == "print('hi')\n" for w in worktrees)
    assert all(w.path.parent == repo / ".git" / "fanflow-worktrees" and w.record.is_file() for w in worktrees)
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(manager.remove, worktrees))
    assert sh_git(repo, "worktree", "list", "--porcelain").count("worktree ") == 1
    assert not list((repo / ".git" / "fanflow-worktrees").iterdir())
    assert len(sh_git(repo, "branch", "--list", "fanflow/*").split()) == 16


def test_worktree_adds_wait_for_the_repository_lock_across_threads_and_processes(
    tmp_path: Path, repo: Path
) -> None:
    cache = tmp_path / "cache"
    code = (
        "import sys\n"
        "from fanflow.executors.agent import WorktreeManager\n"
        "manager = WorktreeManager(cache_dir=sys.argv[2])\n"
        "print('ready', flush=True)\n"
        "print(manager.create(sys.argv[1], 'HEAD', 'proc').branch, flush=True)\n"
    )
    # The pool outside the lock: leaving the block releases the lock before waiting for the thread.
    with ThreadPoolExecutor(1) as pool:
        with repo_lock(repo / ".git" / LOCK_NAME):
            argv = [sys.executable, "-c", code, str(repo), str(cache)]
            child = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
            thread = pool.submit(WorktreeManager(cache_dir=cache).create, str(repo), "HEAD", "thread")
            ready = child.stdout is not None and child.stdout.readline() == "ready\n"
            time.sleep(0.3)
            blocked = child.poll() is None and not thread.done()
            listed = sh_git(repo, "worktree", "list", "--porcelain").count("worktree ")
        branch, _ = child.communicate(timeout=30)
        made = thread.result(timeout=30)
    assert ready and blocked and listed == 1  # both waited for the lock held here
    assert child.returncode == 0 and branch.startswith("fanflow/proc-")
    assert made.branch.startswith("fanflow/thread-")
    assert sh_git(repo, "worktree", "list", "--porcelain").count("worktree ") == 3


def test_arguments_arrive_verbatim(executor: AgentExecutor, bin_dir: Path) -> None:
    nasty = 'it\'s "quoted" $(touch pwned); rm -rf ~ `id` && echo $HOME | cat\nline two {not_a_var} { x }'
    argv = [str(bin_dir / "claude"), "-p", "{prompt}", *CLAUDE_JSON, "--", "Write tests for {file}", "{key}"]
    out = execute(executor, key="k.1", vars={"file": nasty}, argv=argv, prompt="about {file}: {context}")
    received = out.output["result"]["argv"]
    assert received == ["-p", f"about {nasty}: ctx", *CLAUDE_JSON, "--", f"Write tests for {nasty}", "k.1"]
    ran_in = Path(out.output["result"]["cwd"])
    assert ran_in.name.startswith("fanflow-agent-") and not ran_in.exists()  # a temp dir, removed
    assert out.output["git_branch"] is None and out.output["diff"] is None


def test_timeout_stops_the_whole_process_group(
    tmp_path: Path, executor: AgentExecutor, repo: Path, bin_dir: Path
) -> None:
    pidfile = tmp_path / "grandchild.pid"
    prompt = f"write partial.txt: before the timeout\ngrandchild {pidfile}\nsleep 30"
    started = time.monotonic()
    with pytest.raises(AgentTimeoutError) as caught:
        execute(executor, repo=str(repo), worktree=True, argv=claude(bin_dir), prompt=prompt, timeout_s=1.5,
                kill_grace_s=1)  # fmt: skip
    assert time.monotonic() - started < 8
    assert isinstance(caught.value, BranchTimeoutError) and caught.value.retryable is False
    assert wait_for(lambda: pid_gone(int(pidfile.read_text())))
    output = caught.value.output
    assert output is not None and output["timed_out"] and output["exit_code"] < 0
    assert output["changed_files"] == ["partial.txt"]  # the work done so far is on the branch
    assert sh_git(repo, "show", f"{output['git_branch']}:partial.txt") == "before the timeout\n"


def test_sigterm_ignored_means_sigkill_after_the_grace(
    tmp_path: Path, executor: AgentExecutor, bin_dir: Path
) -> None:
    pidfile = tmp_path / "stubborn.pid"
    prompt = f"ignore-term\nstubborn-grandchild {pidfile}\nsleep 30"
    started = time.monotonic()
    with pytest.raises(AgentTimeoutError) as caught:
        execute(executor, argv=claude(bin_dir), prompt=prompt, timeout_s=1, kill_grace_s=0.5)
    assert time.monotonic() - started < 8
    assert caught.value.output is not None and caught.value.output["exit_code"] == -9
    assert wait_for(lambda: pid_gone(int(pidfile.read_text())))


def test_descendants_left_running_after_a_normal_exit_are_stopped(
    tmp_path: Path, executor: AgentExecutor, bin_dir: Path
) -> None:
    pidfile = tmp_path / "left.pid"
    out = execute(executor, argv=claude(bin_dir), prompt=f"grandchild {pidfile}", kill_grace_s=1)
    assert out.output["exit_code"] == 0
    assert wait_for(lambda: pid_gone(int(pidfile.read_text())))


def test_codex_usage_is_summed_and_priced(executor: AgentExecutor, repo: Path, bin_dir: Path) -> None:
    argv = [str(bin_dir / "codex"), "exec", "--json", "-m", "gpt-4o-mini", "{prompt}"]
    out = execute(
        executor, repo=str(repo), worktree=True, argv=argv, prompt="write c.txt: x\nturns 3\nresult ok"
    )
    assert out.model == "openai:codex"
    assert (
        out.usage.input_tokens == 3000 and out.usage.cached_tokens == 1200 and out.usage.output_tokens == 150
    )
    assert out.usage.calls == 3
    expected = cost_usd("openai:gpt-4o-mini", input_tokens=3000, cached_tokens=1200, output_tokens=150)
    assert out.usage.cost_usd == pytest.approx(expected) and expected > 0
    assert out.output["result"]["result"] == "ok"
    assert out.output["changed_files"] == ["c.txt"]


@pytest.mark.parametrize(
    ("prompt", "error_type", "retryable", "needle"),
    [
        ("fail error_max_turns: ran out of turns", AgentFailedError, False, "error_max_turns"),
        ("fail error_max_budget_usd: over budget", AgentFailedError, False, "error_max_budget_usd"),
        ("fail success: API Error: 429 rate_limit_error, retry after 12", AgentRateLimitedError, True, "429"),
        ("stderr fatal: the model is overloaded\nexit 1", AgentRateLimitedError, True, "overloaded"),
        ("stderr something went wrong\nexit 3", AgentFailedError, False, "exit code 3"),
    ],
)
def test_failures_are_classed(
    executor: AgentExecutor,
    bin_dir: Path,
    prompt: str,
    error_type: type[Exception],
    retryable: bool,
    needle: str,
) -> None:
    with pytest.raises(error_type) as caught:
        execute(executor, argv=claude(bin_dir), prompt=prompt)
    error = caught.value
    assert getattr(error, "retryable", None) is retryable
    assert needle in str(error)
    assert getattr(error, "output", None) is not None
    if isinstance(error, RateLimitedError) and "retry after" in prompt:
        assert error.retry_after_s == 12


def test_a_missing_command_fails_without_retry(executor: AgentExecutor, tmp_path: Path) -> None:
    with pytest.raises(AgentFailedError, match="could not start") as caught:
        execute(executor, argv=[str(tmp_path / "no-such-agent")], prompt="x")
    assert not caught.value.retryable


def test_only_named_variables_reach_the_agent(
    monkeypatch: pytest.MonkeyPatch, executor: AgentExecutor, bin_dir: Path
) -> None:
    monkeypatch.setenv("FANFLOW_TEST_SECRET_KEY", "sk-do-not-leak")
    monkeypatch.setenv("AGENT_WANTED", "yes")
    out = execute(executor, argv=claude(bin_dir), prompt="hi", env=["AGENT_WANTED", "AGENT_NOT_SET"])
    environ = out.output["result"]["environ"]
    assert "AGENT_WANTED" in environ  # names only: the stand-in never prints values
    assert "FANFLOW_TEST_SECRET_KEY" not in environ and "AGENT_NOT_SET" not in environ
    assert set(environ) <= {*BASE_ENV, "AGENT_WANTED"}
    assert "sk-do-not-leak" not in json.dumps(out.output)


def test_failed_commit_keeps_the_worktree(executor: AgentExecutor, repo: Path, bin_dir: Path) -> None:
    out = execute(
        executor, repo=str(repo), worktree=True, argv=claude(bin_dir), prompt="write w.txt: w\nlock-index"
    )
    output = out.output
    kept = Path(output["worktree"])
    assert (kept / "w.txt").read_text() == "w\n"
    assert output["commit"] is None
    assert any("could not be committed" in warning for warning in output["warnings"])


def test_agent_commits_and_chatter(executor: AgentExecutor, repo: Path, bin_dir: Path) -> None:
    prompt = "write a.txt: 1\ncommit the agent's own commit\nwrite b.txt: 2\nchatter 300"
    out = execute(executor, repo=str(repo), worktree=True, argv=claude(bin_dir), prompt=prompt)
    output = out.output
    assert output["changed_files"] == ["a.txt", "b.txt"]
    assert len(output["stdout"].encode()) <= 64 * 1024 and len(output["stderr"].encode()) <= 64 * 1024
    assert output["result"]["result"] == "done"  # the JSON line after 300 KiB of noise
    log = sh_git(repo, "log", "--format=%s", output["git_branch"])
    assert log.splitlines()[:2] == ["fanflow: agent run b1", "the agent's own commit"]


def test_workdir_in_a_repo_is_diffed_without_touching_its_index(
    executor: AgentExecutor, repo: Path, bin_dir: Path
) -> None:
    out = execute(
        executor, workdir=str(repo), argv=claude(bin_dir), prompt="write new.txt: n\nappend README.md: m"
    )
    assert out.output["changed_files"] == ["README.md", "new.txt"]
    assert "+n" in out.output["diff"]
    assert out.output["git_branch"] is None and out.output["worktree"] == str(repo)
    assert sorted(sh_git(repo, "status", "--porcelain").splitlines()) == [" M README.md", "?? new.txt"]


def test_repo_url_is_cloned_once_and_fetched(executor: AgentExecutor, repo: Path, bin_dir: Path) -> None:
    url = f"file://{repo}"
    first = execute(
        executor, repo=url, ref="main", worktree=True, argv=claude(bin_dir), prompt="write u.txt: 1"
    )
    assert first.output["changed_files"] == ["u.txt"]
    (repo / "later.txt").write_text("pushed later\n")
    sh_git(repo, "add", "-A")
    sh_git(repo, "commit", "-q", "-m", "later")
    second = execute(
        executor, repo=url, ref="main", worktree=True, argv=claude(bin_dir), prompt="append later.txt: 2"
    )
    assert "+2" in second.output["diff"] and "+pushed later" not in second.output["diff"]
    clones = [path for path in (executor.worktrees.cache_dir).iterdir() if path.is_dir()]
    assert len(clones) == 1
    assert sh_git(clones[0], "show", f"{second.output['git_branch']}:later.txt") == "pushed later\n2\n"
    assert sh_git(repo, "branch", "--list", "fanflow/*") == ""  # the branches live in the clone


def test_cleanup_removes_a_dead_runs_worktree_and_keeps_its_work(tmp_path: Path, repo: Path) -> None:
    cache = tmp_path / "cache"
    code = (
        "import json, sys\n"
        "from fanflow.executors.agent import WorktreeManager\n"
        "w = WorktreeManager(cache_dir=sys.argv[2]).create(sys.argv[1], 'HEAD', 'dead')\n"
        "(w.path / 'unsaved.txt').write_text('left behind')\n"
        "print(json.dumps({'path': str(w.path), 'branch': w.branch}))\n"
    )
    alive = WorktreeManager(cache_dir=cache).create(str(repo), "HEAD", "alive")
    done = subprocess.run([sys.executable, "-c", code, str(repo), str(cache)], capture_output=True, text=True,
                          check=True)  # fmt: skip
    dead = json.loads(done.stdout)
    removed = cleanup_worktrees(str(repo), cache_dir=cache)
    assert removed == [Path(dead["path"])]
    assert not Path(dead["path"]).exists() and alive.path.is_dir()
    assert sh_git(repo, "show", f"{dead['branch']}:unsaved.txt") == "left behind"
    assert not (repo / ".git" / "fanflow-worktrees" / f"{Path(dead['path']).name}.json").exists()
    WorktreeManager(cache_dir=cache).remove(alive)
    assert cleanup_worktrees(str(repo), cache_dir=cache) == []
    # A manager's first worktree of a repository cleans up after dead runs by itself.
    done = subprocess.run([sys.executable, "-c", code, str(repo), str(cache)], capture_output=True, text=True,
                          check=True)  # fmt: skip
    dead = json.loads(done.stdout)
    fresh = WorktreeManager(cache_dir=cache)
    fresh.remove(fresh.create(str(repo), "HEAD", "next"))
    assert not Path(dead["path"]).exists()
    assert sh_git(repo, "show", f"{dead['branch']}:unsaved.txt") == "left behind"
