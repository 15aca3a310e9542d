"""The ``git_merge`` merge: every succeeded branch's git work onto one integration branch, in order.

After the fan-in, each succeeded branch whose output names a ``git_branch`` (an agent run's kept
branch) is merged with ``git merge --no-ff --no-edit`` onto a commit made from ``ref``, in declared
order. A merge that conflicts is recorded (its conflicting files, and the earlier merged branches
that touched them), aborted, and the next branch is merged. All of it happens in a temporary
worktree with a detached HEAD, so neither the repository's own work tree nor any branch is ever
left mid-merge; when every branch has been tried, the integration branch is set to the result
(created, or moved if fanflow made it) and the temporary worktree is removed.

Adding and removing the temporary worktree and setting the branch hold the same per-repository
lock as the agent worktrees (``WorktreeManager``); a repository given as a URL is its clone on this
host (``WorktreeManager.local_repo``), where the agents' branches are.

The merged output: ``branch``, ``head`` (its commit), ``base`` (the commit ``ref`` resolved to),
``merged`` (keys), ``conflicts`` (``{"key", "files", "with"}`` each) and ``skipped`` (keys whose
output has no ``git_branch``). A conflict does not fail the job; a missing repository, ref or
branch, or a failing git command, is a ``MergeError``.
"""

from __future__ import annotations

import secrets
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fanflow.errors import MergeError
from fanflow.executors.agent.gitcmd import COMMIT_IDENTITY, GitError, git, redact
from fanflow.executors.agent.worktrees import LOCK_NAME, WorktreeManager, repo_lock
from fanflow.result import SubtaskOutcome
from fanflow.spec import GitMerge

__all__ = ["MARKER", "git_merge", "kept_branches"]

#: ``git config branch.<name>.<MARKER> true`` marks an integration branch fanflow made (and may move).
MARKER = "fanflowmerge"
#: The merges fanflow makes: unsigned, no hook runs, no recorded conflict resolution is reused.
_MERGE_CONFIG = ("-c", "commit.gpgsign=false", "-c", "core.hooksPath=/dev/null", "-c", "rerere.enabled=false")


@dataclass(slots=True)
class _Integration:
    """What the merges did so far."""

    merged: list[str] = field(default_factory=list)
    conflicts: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    touched: dict[str, set[str]] = field(default_factory=dict)


def git_merge(
    spec: GitMerge, outcomes: list[SubtaskOutcome], *, manager: WorktreeManager | None = None
) -> dict[str, Any]:
    """Merge the branches of ``outcomes`` (succeeded, in declared order) onto ``spec.branch``.

    Args:
        spec: the merge, with ``repo`` and ``ref`` filled in (a validated fan-out fills them).
        outcomes: the succeeded branches, in declared order.
        manager: finds the local clone of a URL repository (default: one configured from the
            environment, like the agent executor's).

    Returns:
        ``{"branch", "head", "base", "merged", "conflicts", "skipped"}``.

    Raises:
        MergeError: no repository, a ref or branch git does not know, or a git command failed.
    """
    if spec.repo is None:
        raise MergeError("git_merge has no repo: set merge.repo (or give the agent subtasks one)")
    try:
        return _integrate(spec, spec.repo, outcomes, manager or WorktreeManager())
    except GitError as exc:
        raise MergeError(f"git_merge into {redact(spec.repo)}: {_one_line(str(exc))}") from None
    except OSError as exc:
        raise MergeError(f"git_merge into {redact(spec.repo)}: {exc.strerror or exc}") from None


def kept_branches(outcomes: Iterable[SubtaskOutcome], merged: Any = None) -> list[str]:
    """The git branches a job left: each outcome's ``git_branch``, and a ``git_merge``'s branch."""
    names = [o.output.get("git_branch") for o in outcomes if isinstance(o.output, dict)]
    if isinstance(merged, dict) and {"branch", "head", "base", "merged"} <= merged.keys():
        names.append(merged.get("branch"))
    return [name for name in dict.fromkeys(names) if isinstance(name, str) and name]


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _integrate(
    spec: GitMerge, repo: str, outcomes: list[SubtaskOutcome], manager: WorktreeManager
) -> dict[str, Any]:
    local = manager.local_repo(repo, clone=False)
    common = _common_dir(local)
    ref = spec.ref or "HEAD"
    base = _commit(local, ref, f"ref {ref!r} is not a commit of the repository")
    branch = spec.branch or f"fanflow/merge-{secrets.token_hex(3)}"
    if git(["check-ref-format", "--branch", branch], cwd=local, check=False).returncode != 0:
        raise MergeError(f"git_merge: {branch!r} is not a valid branch name")
    state = _Integration()
    heads: list[tuple[str, str, str]] = []  # key, branch, commit
    for outcome in outcomes:
        name = outcome.output.get("git_branch") if isinstance(outcome.output, dict) else None
        if not isinstance(name, str) or not name:
            state.skipped.append(outcome.key)
            continue
        commit = _commit(local, f"refs/heads/{name}", f"branch {name!r} of {outcome.key!r} is not in it")
        heads.append((outcome.key, name, commit))
    scratch = Path(tempfile.mkdtemp(prefix="fanflow-merge-", dir=manager.root))
    path = scratch / "worktree"
    try:
        with repo_lock(common / LOCK_NAME):
            git(["worktree", "add", "--quiet", "--detach", "--no-checkout", str(path), base], cwd=local)
        git(["reset", "--hard", "--quiet"], cwd=path)  # the checkout, outside the lock
        for key, name, commit in heads:
            _merge_one(path, base, key, name, commit, state)
        head = git(["rev-parse", "HEAD"], cwd=path).stdout.strip()
        with repo_lock(common / LOCK_NAME):
            _set_branch(local, branch, head)
    finally:
        _remove(local, common, path, scratch)
    return {"branch": branch, "head": head, "base": base, "merged": state.merged,
            "conflicts": state.conflicts, "skipped": state.skipped}  # fmt: skip


def _common_dir(repo: Path) -> Path:
    done = git(["rev-parse", "--git-common-dir"], cwd=repo, check=False)
    if done.returncode != 0:
        raise MergeError(f"git_merge: {repo} is not a git repository")
    return (repo / done.stdout.strip()).resolve()


def _commit(repo: Path, ref: str, missing: str) -> str:
    done = git(["rev-parse", "--verify", "--quiet", "--end-of-options", f"{ref}^{{commit}}"], cwd=repo,
               check=False)  # fmt: skip
    if done.returncode != 0:
        raise MergeError(f"git_merge: {missing}")
    return done.stdout.strip()


def _names(args: list[str], cwd: Path) -> list[str]:
    out = git(["diff", "--name-only", "--no-renames", "-z", *args], cwd=cwd).stdout
    return sorted({name for name in out.split("\0") if name})


def _merge_one(path: Path, base: str, key: str, name: str, commit: str, state: _Integration) -> None:
    """Merge one branch's commit onto the worktree's HEAD, or record its conflict and abort it."""
    message = f"fanflow: merge {key} ({name})"
    done = git([*_MERGE_CONFIG, "merge", "--no-ff", "--no-edit", "--no-verify-signatures", "-m", message,
                commit], cwd=path, env=COMMIT_IDENTITY, check=False)  # fmt: skip
    if done.returncode == 0:
        state.merged.append(key)
        state.touched[key] = set(_names([f"{base}...{commit}"], path))
        return
    conflicted = _names(["--diff-filter=U"], path)
    _abort(path)
    if not conflicted:
        detail = _one_line((done.stderr or done.stdout).strip()[-400:]) or f"exit code {done.returncode}"
        raise GitError(f"merging {name} ({key}) failed: {detail}")
    earlier = [other for other in state.merged if state.touched[other] & set(conflicted)]
    state.conflicts.append({"key": key, "files": conflicted, "with": earlier})


def _abort(path: Path) -> None:
    """End a merge in progress in the temporary worktree (if any): back to the last commit."""
    if git(["rev-parse", "--verify", "--quiet", "MERGE_HEAD"], cwd=path, check=False).returncode == 0:
        git(["merge", "--abort"], cwd=path)
    git(["reset", "--hard", "--quiet"], cwd=path)


def _set_branch(local: Path, branch: str, head: str) -> None:
    """Create ``branch`` at ``head``, or move it there when fanflow made it (caller holds the lock)."""
    exists = git(["rev-parse", "--verify", "--quiet", f"refs/heads/{branch}"], cwd=local, check=False)
    if exists.returncode == 0:
        marked = git(["config", "--get", f"branch.{branch}.{MARKER}"], cwd=local, check=False)
        if marked.stdout.strip() != "true":
            raise MergeError(
                f"git_merge: branch {branch!r} already exists and was not made by a git_merge; "
                "name another (merge.branch) or delete it"
            )
        git(["branch", "--force", "--no-track", branch, head], cwd=local)
    else:
        git(["branch", "--no-track", branch, head], cwd=local)
    git(["config", f"branch.{branch}.{MARKER}", "true"], cwd=local)


def _remove(local: Path, common: Path, path: Path, scratch: Path) -> None:
    """Remove the temporary worktree (whatever state it is in) and its directory."""
    try:
        with repo_lock(common / LOCK_NAME):
            done = git(["worktree", "remove", "--force", "--force", str(path)], cwd=local, check=False)
            if done.returncode != 0 or path.exists():
                shutil.rmtree(scratch, ignore_errors=True)
                git(["worktree", "prune"], cwd=local, check=False)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
