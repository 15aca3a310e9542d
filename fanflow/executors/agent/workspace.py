"""Where an agent runs and what it changed there.

Three kinds of working directory:

- a worktree (``worktree: true``): the agent's changes, untracked files included, are committed on
  the worktree's branch with fanflow's fixed identity, and the diff is ``<base>..HEAD`` (commits the
  agent made itself included). Then the worktree is removed, unless ``keep_worktree`` or the commit
  failed: work is never deleted uncommitted.
- a ``workdir`` (or a local ``repo`` without ``worktree``): nothing is committed or removed; when it
  is inside a git repository the diff against ``ref`` (untracked files included) is taken through a
  temporary index, so the repository's own index is left alone.
- a temporary directory: its files are the changed files (no diff); removed unless
  ``keep_worktree``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from fanflow.executors.agent.gitcmd import GitError, commit_all, git, git_bounded
from fanflow.executors.agent.worktrees import Worktree, WorktreeManager, is_git_url
from fanflow.spec import AgentRun

__all__ = ["DIFF_LIMIT", "Changes", "Workspace", "close_workspace", "collect_changes", "open_workspace"]

#: At most this much of a diff goes into the output (the branch carries all of it).
DIFF_LIMIT = 512 * 1024
#: At most this many changed files are listed for a directory outside git.
_FILES_LIMIT = 10_000
_DIFF_FLAGS = ("--no-color", "--no-ext-diff", "--binary", "--src-prefix=a/", "--dst-prefix=b/")


@dataclass(slots=True)
class Workspace:
    """An attempt's working directory.

    Attributes:
        path: the directory the agent runs in.
        kind: ``worktree``, ``workdir`` or ``temp``.
        worktree: the git worktree (kind ``worktree``).
        ref: what a ``workdir`` inside git is diffed against.
        started: when the attempt began (files of a directory outside git changed after it).
        warnings: what went wrong on the way without failing the run.
    """

    path: Path
    kind: str
    worktree: Worktree | None = None
    ref: str = "HEAD"
    started: float = field(default_factory=time.time)
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Changes:
    """What the agent changed.

    Attributes:
        diff: the patch (``git apply``-able; binary files included), or None outside git.
        diff_truncated: the diff was cut at ``DIFF_LIMIT``.
        changed_files: sorted paths relative to the repository (or the directory).
        commit: the commit carrying the work on the worktree's branch (None: nothing to commit).
        committed: the work is safe on the branch (or there was none); False keeps the worktree.
    """

    diff: str | None = None
    diff_truncated: bool = False
    changed_files: list[str] = field(default_factory=list)
    commit: str | None = None
    committed: bool = True


def open_workspace(spec: AgentRun, key: str, manager: WorktreeManager) -> Workspace:
    """Make (or find) the attempt's working directory.

    Raises:
        GitError: the worktree could not be made.
        FileNotFoundError: the ``workdir`` (or local ``repo``) does not exist.
        ValueError: a ``repo`` URL without ``worktree: true``.
    """
    if spec.worktree:
        assert spec.repo is not None  # the spec's validator guarantees it
        worktree = manager.create(spec.repo, spec.ref, key)
        return Workspace(path=worktree.path, kind="worktree", worktree=worktree)
    directory = spec.workdir or spec.repo
    if directory is not None:
        if spec.workdir is None and is_git_url(directory):
            raise ValueError("a repo given as a URL needs worktree: true")
        path = Path(directory).expanduser()
        if not path.is_dir():
            raise FileNotFoundError(f"the agent's working directory {directory!r} does not exist")
        return Workspace(path=path.resolve(), kind="workdir", ref=spec.ref)
    return Workspace(path=Path(tempfile.mkdtemp(prefix="fanflow-agent-")), kind="temp")


def collect_changes(workspace: Workspace, *, key: str, diff_limit: int = DIFF_LIMIT) -> Changes:
    """What the agent changed; on a worktree, commit it on the branch first. Never raises."""
    try:
        if workspace.worktree is not None:
            return _commit_worktree(workspace, workspace.worktree, key, diff_limit)
        if workspace.kind == "workdir" and _inside_git(workspace.path):
            return _diff_workdir(workspace, diff_limit)
        # A second of slack: file times come from a coarser clock than time.time().
        since = 0.0 if workspace.kind == "temp" else workspace.started - 1.0
        return Changes(changed_files=_files_since(workspace.path, since))
    except (GitError, OSError) as exc:
        workspace.warnings.append(f"could not collect the changes: {exc}")
        return Changes(committed=workspace.worktree is None)


def close_workspace(workspace: Workspace, *, keep: bool, manager: WorktreeManager) -> str | None:
    """Remove a worktree or temporary directory unless ``keep``; where the files are now (or None)."""
    if workspace.kind == "workdir" or keep:
        return str(workspace.path)
    try:
        if workspace.worktree is not None:
            manager.remove(workspace.worktree)
        else:
            shutil.rmtree(workspace.path)
    except (GitError, OSError) as exc:
        workspace.warnings.append(f"could not remove {workspace.path}: {exc}")
        return str(workspace.path) if workspace.path.exists() else None
    return None


def _names(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> list[str]:
    out = git(["diff", "--name-only", "--no-renames", "-z", *args], cwd=cwd, env=env).stdout
    return sorted({name for name in out.split("\0") if name})


def _commit_worktree(workspace: Workspace, worktree: Worktree, key: str, limit: int) -> Changes:
    path = worktree.path
    try:
        commit = commit_all(
            path, f"fanflow: agent run {key}\n\nBranch {worktree.branch}, made from {worktree.base}."
        )
    except GitError as exc:
        workspace.warnings.append(f"the work could not be committed, so the worktree was kept: {exc}")
        diff, cut = git_bounded(["diff", *_DIFF_FLAGS, worktree.base], cwd=path, limit=limit)
        return Changes(diff=diff, diff_truncated=cut, changed_files=_names([worktree.base], path),
                       committed=False)  # fmt: skip
    diff, cut = git_bounded(["diff", *_DIFF_FLAGS, worktree.base, "HEAD"], cwd=path, limit=limit)
    return Changes(diff=diff, diff_truncated=cut, changed_files=_names([worktree.base, "HEAD"], path),
                   commit=commit)  # fmt: skip


def _inside_git(path: Path) -> bool:
    return git(["rev-parse", "--is-inside-work-tree"], cwd=path, check=False).stdout.strip() == "true"


def _diff_workdir(workspace: Workspace, limit: int) -> Changes:
    """The diff of a work tree against ``ref`` through a copy of its index (its own index untouched)."""
    path = workspace.path
    index = Path(git(["rev-parse", "--path-format=absolute", "--git-path", "index"], cwd=path).stdout.strip())
    with tempfile.TemporaryDirectory(prefix="fanflow-index-") as scratch:
        copy = os.path.join(scratch, "index")
        if index.is_file():
            shutil.copyfile(index, copy)
        env = {"GIT_INDEX_FILE": copy}
        git(["add", "-A"], cwd=path, env=env)
        resolved = git(["rev-parse", "--verify", "--end-of-options", f"{workspace.ref}^{{commit}}"], cwd=path)
        ref = resolved.stdout.strip()
        diff, cut = git_bounded(["diff", "--cached", *_DIFF_FLAGS, ref, "--"], cwd=path, limit=limit, env=env)
        names = _names(["--cached", ref, "--"], path, env)
    return Changes(diff=diff, diff_truncated=cut, changed_files=names)


def _files_since(root: Path, since: float) -> list[str]:
    """Files under ``root`` modified at or after ``since`` (``.git`` skipped), at most ``_FILES_LIMIT``."""
    found: list[str] = []
    for directory, subdirs, files in os.walk(root):
        subdirs[:] = [name for name in subdirs if name != ".git"]
        for name in files:
            full = os.path.join(directory, name)
            try:
                if os.lstat(full).st_mtime >= since:
                    found.append(os.path.relpath(full, root).replace(os.sep, "/"))
            except OSError:
                continue
            if len(found) >= _FILES_LIMIT:
                return sorted(found)
    return sorted(found)
