"""The ``git_merge`` merge on real repositories: clean merges in order, conflicts reported, nothing mid-merge.

Branches are made the way the agent executor makes them (a worktree on a ``fanflow/...`` branch, its
work committed, the worktree removed); no Redis and no Celery here.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from fanflow.errors import MergeError, SpecError
from fanflow.executors.agent import WorktreeManager
from fanflow.executors.agent.gitcmd import commit_all
from fanflow.gitmerge import MARKER, git_merge, kept_branches
from fanflow.merge import merge_outputs
from fanflow.result import OutcomeStatus, SubtaskOutcome
from fanflow.spec import FanOut, GitMerge, validate_fanout
from tests.gitrepo import sh_git

README = "# project\nline two\n\nmiddle\n\nline six\n"


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A repository on ``main``: a README of a few lines and a source file."""
    path = tmp_path / "repo"
    path.mkdir()
    sh_git(path, "init", "-q", "-b", "main")
    (path / "README.md").write_text(README)
    (path / "app.py").write_text("print('hi')\n")
    sh_git(path, "add", "-A")
    sh_git(path, "commit", "-q", "-m", "initial")
    return path


@pytest.fixture
def manager(tmp_path: Path) -> WorktreeManager:
    return WorktreeManager(root=tmp_path / "worktrees", cache_dir=tmp_path / "cache", fetch_ttl_s=0)


def agent_branch(manager: WorktreeManager, repo: str, key: str, files: dict[str, str]) -> str:
    """A branch carrying ``files`` (path: text), made like an agent run's: worktree, commit, removal."""
    worktree = manager.create(repo, "HEAD", key)
    for name, text in files.items():
        (worktree.path / name).write_text(text)
    commit_all(worktree.path, f"fanflow: agent run {key}")
    manager.remove(worktree)
    return worktree.branch


def succeeded(key: str, output: Any) -> SubtaskOutcome:
    return SubtaskOutcome(key=key, status=OutcomeStatus.SUCCEEDED, output=output)


def assert_untouched(repo: Path, head: str) -> None:
    """The repository: same HEAD, the same work tree, no merge in progress, no worktree left."""
    assert sh_git(repo, "rev-parse", "HEAD").strip() == head
    assert sh_git(repo, "symbolic-ref", "--short", "HEAD").strip() == "main"
    assert not (repo / ".git" / "MERGE_HEAD").exists()
    assert sh_git(repo, "worktree", "list", "--porcelain").count("worktree ") == 1


def first_parent_log(repo: Path, branch: str) -> list[str]:
    return sh_git(repo, "log", "--first-parent", "--reverse", "--format=%s", branch).splitlines()


def test_clean_merges_land_in_declared_order_on_a_kept_branch(
    repo: Path, manager: WorktreeManager, tmp_path: Path
) -> None:
    head = sh_git(repo, "rev-parse", "HEAD").strip()
    (repo / "untracked.txt").write_text("mine\n")  # the user's work in progress stays as it is
    (repo / "app.py").write_text("print('edited')\n")
    branches = {
        key: agent_branch(manager, str(repo), key, files)
        for key, files in [("c", {"c.txt": "c\n"}), ("a", {"a.txt": "a\n"}), ("b", {"b.txt": "b\n"})]
    }
    outcomes = [
        succeeded("c", {"git_branch": branches["c"], "exit_code": 0}),
        succeeded("text", "no branch here"),
        succeeded("a", {"git_branch": branches["a"]}),
        succeeded("none", {"git_branch": None}),
        succeeded("b", {"git_branch": branches["b"]}),
    ]
    spec = GitMerge(repo=str(repo), ref="main", branch="fanflow/integration")
    merged = git_merge(spec, outcomes, manager=manager)
    assert merged["merged"] == ["c", "a", "b"]
    assert merged["conflicts"] == [] and merged["skipped"] == ["text", "none"]
    assert merged["branch"] == "fanflow/integration" and merged["base"] == head
    assert sh_git(repo, "rev-parse", "fanflow/integration").strip() == merged["head"]
    assert first_parent_log(repo, "fanflow/integration") == [
        "initial",
        *(f"fanflow: merge {key} ({branches[key]})" for key in ("c", "a", "b")),
    ]
    for key in ("a", "b", "c"):
        assert sh_git(repo, "show", f"fanflow/integration:{key}.txt") == f"{key}\n"
    assert sh_git(repo, "config", f"branch.fanflow/integration.{MARKER}").strip() == "true"
    assert_untouched(repo, head)
    assert sorted(sh_git(repo, "status", "--porcelain").splitlines()) == [" M app.py", "?? untracked.txt"]
    assert not list((tmp_path / "worktrees").iterdir())  # the temporary worktree is gone
    assert kept_branches(outcomes, merged) == [branches["c"], branches["a"], branches["b"],
                                               "fanflow/integration"]  # fmt: skip


def test_a_conflict_names_its_files_and_the_earlier_branch_and_the_rest_still_merge(
    repo: Path, manager: WorktreeManager, tmp_path: Path
) -> None:
    head = sh_git(repo, "rev-parse", "HEAD").strip()
    readme = README
    specs = [
        ("first", {"README.md": readme.replace("line two", "two, says first"), "first.txt": "1\n"}),
        ("second", {"second.txt": "2\n"}),
        ("clash", {"README.md": readme.replace("line two", "two, says clash"), "second.txt": "mine\n",
                   "clash.txt": "x\n"}),
        ("last", {"README.md": readme.replace("line six", "six, says last")}),
    ]  # fmt: skip
    branches = {key: agent_branch(manager, str(repo), key, files) for key, files in specs}
    outcomes = [succeeded(key, {"git_branch": branches[key]}) for key, _ in specs]
    merged = merge_outputs(GitMerge(repo=str(repo), ref="HEAD", branch="fanflow/with-clash"), outcomes)
    assert merged["merged"] == ["first", "second", "last"]
    assert merged["conflicts"] == [
        {"key": "clash", "files": ["README.md", "second.txt"], "with": ["first", "second"]}
    ]
    tree = sh_git(repo, "ls-tree", "-r", "--name-only", "fanflow/with-clash").split()
    assert sorted(tree) == ["README.md", "app.py", "first.txt", "second.txt"]
    assert sh_git(repo, "show", "fanflow/with-clash:README.md") == (
        "# project\ntwo, says first\n\nmiddle\n\nsix, says last\n"
    )
    assert_untouched(repo, head)
    assert sh_git(repo, "status", "--porcelain") == ""
    assert not list((tmp_path / "worktrees").iterdir())


def test_the_branch_fanflow_made_is_moved_and_any_other_is_refused(
    repo: Path, manager: WorktreeManager
) -> None:
    one = agent_branch(manager, str(repo), "one", {"one.txt": "1\n"})
    two = agent_branch(manager, str(repo), "two", {"two.txt": "2\n"})
    spec = GitMerge(repo=str(repo), ref="main", branch="fanflow/again")
    first = git_merge(spec, [succeeded("one", {"git_branch": one})], manager=manager)
    again = git_merge(spec, [succeeded("one", {"git_branch": one}), succeeded("two", {"git_branch": two})],
                      manager=manager)  # fmt: skip
    assert first["head"] != again["head"] == sh_git(repo, "rev-parse", "fanflow/again").strip()
    sh_git(repo, "branch", "users-own", "main")
    with pytest.raises(MergeError, match="'users-own' already exists and was not made by a git_merge"):
        git_merge(GitMerge(repo=str(repo), ref="main", branch="users-own"), [], manager=manager)
    sh_git(repo, "config", f"branch.main.{MARKER}", "true")  # even then, never the checked-out branch
    with pytest.raises(MergeError, match=r"(?i)git_merge into .*cannot force update"):
        git_merge(GitMerge(repo=str(repo), ref="main", branch="main"), [], manager=manager)
    assert_untouched(repo, sh_git(repo, "rev-parse", "main").strip())


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"repo": "/nonexistent/repository"}, "is not a directory"),
        ({"ref": "no-such-ref"}, "ref 'no-such-ref' is not a commit"),
        ({"branch": "fanflow/bad..name"}, "'fanflow/bad..name' is not a valid branch name"),
        ({"missing_branch": True}, "branch 'fanflow/gone' of 'k' is not in it"),
    ],
)
def test_what_cannot_be_merged_is_one_line_merge_error(
    repo: Path, manager: WorktreeManager, change: dict[str, Any], message: str
) -> None:
    fields: dict[str, Any] = {"repo": str(repo), "ref": "main", "branch": "fanflow/x"}
    outcomes = [succeeded("k", {"git_branch": "fanflow/gone"})] if change.pop("missing_branch", False) else []
    with pytest.raises(MergeError, match=message) as caught:
        git_merge(GitMerge.model_construct(**(fields | change)), outcomes, manager=manager)
    assert "\n" not in str(caught.value)
    assert sh_git(repo, "branch", "--list", "fanflow/x") == ""


def test_a_url_repository_merges_in_the_clone_where_the_agents_worked(
    repo: Path, manager: WorktreeManager
) -> None:
    url = f"file://{repo}"
    branches = [agent_branch(manager, url, key, {f"{key}.txt": key}) for key in ("u1", "u2")]
    outcomes = [
        succeeded(key, {"git_branch": name}) for key, name in zip(("u1", "u2"), branches, strict=True)
    ]
    merged = git_merge(GitMerge(repo=url, ref="main", branch="fanflow/from-url"), outcomes, manager=manager)
    assert merged["merged"] == ["u1", "u2"]
    clone = manager.local_repo(url, clone=False)
    assert sh_git(clone, "rev-parse", "fanflow/from-url").strip() == merged["head"]
    assert sh_git(repo, "branch", "--list", "fanflow/*") == ""  # the origin is not written to


def test_the_fan_out_fills_in_repo_ref_and_branch_or_says_which_field_to_set() -> None:
    def fanout(runs: list[dict[str, Any]], **merge: Any) -> dict[str, Any]:
        subtasks = [{"key": f"k{i}", "run": {"kind": "agent", "argv": ["claude"], **run}}
                    for i, run in enumerate(runs)]  # fmt: skip
        return {
            "name": "Tests for the API!",
            "subtasks": subtasks,
            "merge": {"strategy": "git_merge", **merge},
        }

    same = [
        {"repo": "/r", "ref": "dev", "worktree": True},
        {"repo": "/r", "ref": "dev", "worktree": True},
        {},
    ]
    filled = validate_fanout(fanout(same)).merge
    assert isinstance(filled, GitMerge) and (filled.repo, filled.ref) == ("/r", "dev")
    assert filled.branch is not None and re.fullmatch(
        r"fanflow/merge-tests-for-the-api-[0-9a-f]{6}", filled.branch
    )
    stored = FanOut.model_validate(validate_fanout(fanout(same)).model_dump())
    assert FanOut.model_validate(stored.model_dump()).merge == stored.merge  # filled once, then kept
    explicit = validate_fanout(fanout(same, repo="/other", branch="fanflow/mine")).merge
    assert isinstance(explicit, GitMerge) and (explicit.repo, explicit.ref, explicit.branch) == (
        "/other", "HEAD", "fanflow/mine"
    )  # fmt: skip
    cases = [
        (fanout([{"repo": "/a"}, {"repo": "/b"}]), "2 repositories ('/a', '/b'): set merge.repo"),
        (fanout([{"repo": "/a"}, {"repo": "/a", "ref": "main"}]), "2 refs ('HEAD', 'main'): set merge.ref"),
        (fanout([{}]), "no agent subtask names one, so set merge.repo"),
        (fanout([{"repo": "/a"}], branch="bad..name"), "merge.branch: 'bad..name' is not a valid git branch"),
    ]
    for data, message in cases:
        with pytest.raises(SpecError, match=re.escape(message)):
            validate_fanout(data)
