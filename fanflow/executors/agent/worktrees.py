"""Git worktrees for agent branches: one per attempt, on a branch of its own, never racing on ``.git``.

Concurrent ``git worktree add`` calls on one repository race on ``.git/config.lock`` and friends, so
every change to a repository's shared state (adding, removing, pruning worktrees, fetching) holds
an ``fcntl`` lock on ``<git common dir>/fanflow-worktree.lock``: across threads (each takes it
through its own open file) and across processes on the host. Checking the files out happens
after the lock is released, so branches of a large repository do not queue behind each other.

A worktree lives under ``<git common dir>/fanflow-worktrees/<name>`` (or ``FANFLOW_WORKTREE_ROOT``)
next to a small JSON record naming the process that owns it (pid, its start time, hostname).
``cleanup_worktrees`` removes the worktrees of processes that died on this host, committing what
they left on their branch first; a manager does the same for a repository the first time it makes
a worktree of it. Branches are always kept: they carry the work.

A repository given as a URL (``https://``, ``ssh://``, ``file://``, ``git@host:path``) is cloned
once per host (bare) into ``~/.cache/fanflow/repos/<hash>`` (or ``FANFLOW_REPO_CACHE``) and fetched
before worktrees are made from it (at most once per ``fetch_ttl_s``, so a burst of branches shares
one fetch). Its branches live in that clone only.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import signal
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fanflow.executors.agent.gitcmd import GitError, commit_all, git, redact

__all__ = ["LOCK_NAME", "Worktree", "WorktreeManager", "cleanup_worktrees", "is_git_url", "repo_lock"]

logger = logging.getLogger("fanflow")

LOCK_NAME = "fanflow-worktree.lock"
_ROOT_NAME = "fanflow-worktrees"
_FETCHED_MARK = "fanflow-fetched"
_URL = re.compile(r"^(?:[A-Za-z][A-Za-z0-9+.\-]*://|[\w.\-]+@[\w.\-]+:)")
_UNSAFE = re.compile(r"[^A-Za-z0-9_\-]+")


def is_git_url(repo: str) -> bool:
    """True for ``scheme://...`` and scp-like ``user@host:path``; False for a local path."""
    return bool(_URL.match(repo))


@contextmanager
def repo_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created if missing) for the duration of the block.

    Each call opens the file anew, so two threads of one process exclude each other as two
    processes do.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the last descriptor of the open file releases the lock


@dataclass(frozen=True, slots=True)
class Worktree:
    """One agent attempt's worktree.

    Attributes:
        path: its directory.
        branch: the branch checked out in it (kept after the worktree is removed).
        base: the commit ``ref`` resolved to when the worktree was made (diffs are against it).
        repo: the repository it belongs to (a local path, or the cached clone of a URL).
        record: the JSON file naming its owning process.
    """

    path: Path
    branch: str
    base: str
    repo: Path
    record: Path


def _process_start(pid: int) -> str | None:
    """The start time of ``pid`` (clock ticks since boot, Linux), to tell a reused pid from its owner."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2 :].split()
    return fields[19] if len(fields) > 19 else None


def _process_alive(pid: int, started: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # someone else's process: alive
    try:
        state = Path(f"/proc/{pid}/stat").read_text()
        if state[state.rfind(")") + 2 :].startswith(("Z", "X")):
            return False
    except OSError:
        pass
    return started is None or _process_start(pid) in (None, started)


def _owner_alive(record: dict[str, Any]) -> bool:
    """False only when the owner surely died: same host, and its pid is gone (or reused)."""
    if record.get("host") != socket.gethostname():
        return True
    pid = record.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    started = record.get("pid_start")
    return _process_alive(pid, started if isinstance(started, str) else None)


def _common_dir(repo: Path) -> Path:
    try:
        out = git(["rev-parse", "--git-common-dir"], cwd=repo).stdout.strip()
    except GitError:
        raise GitError(f"{repo} is not a git repository") from None
    return (repo / out).resolve()


class WorktreeManager:
    """Creates, removes and cleans up agent worktrees; clones and fetches repositories given by URL.

    Args:
        root: where worktrees go (default ``FANFLOW_WORKTREE_ROOT``, else
            ``<git common dir>/fanflow-worktrees``).
        cache_dir: where URL repositories are cloned (default ``FANFLOW_REPO_CACHE``, else
            ``~/.cache/fanflow/repos``).
        fetch_ttl_s: a URL repository fetched less than this long ago is not fetched again.
    """

    def __init__(
        self,
        *,
        root: Path | str | None = None,
        cache_dir: Path | str | None = None,
        fetch_ttl_s: float = 10.0,
    ) -> None:
        root = root if root is not None else os.environ.get("FANFLOW_WORKTREE_ROOT") or None
        cache = cache_dir if cache_dir is not None else os.environ.get("FANFLOW_REPO_CACHE") or None
        self.root = Path(root).expanduser() if root is not None else None
        self.cache_dir = (
            Path(cache).expanduser() if cache is not None else Path.home() / ".cache" / "fanflow" / "repos"
        )
        self.fetch_ttl_s = fetch_ttl_s
        self._cleaned: set[Path] = set()
        #: The repositories this host made worktrees in, one path a line: what a worker starting
        #: up cleans after runs that died with their worker (``cleanup_known``).
        self.registry = self.cache_dir.parent / "worktree-repos"

    # --- repositories -----------------------------------------------------------------------------

    def local_repo(self, repo: str, *, clone: bool = True) -> Path:
        """The local repository for ``repo``: the path itself, or the host's clone of a URL.

        Args:
            repo: a local path or a git URL.
            clone: clone a URL that has no clone yet (else raise).

        Raises:
            GitError: not a repository, or the clone failed.
        """
        if not is_git_url(repo):
            path = Path(repo).expanduser()
            if not path.is_dir():
                raise GitError(f"repo {repo!r} is not a directory")
            return path.resolve()
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        target = self.cache_dir / hashlib.sha256(repo.encode()).hexdigest()[:24]
        if (target / "HEAD").exists():
            return target
        if not clone:
            raise GitError(f"{redact(repo)} has no clone on this host")
        with repo_lock(target.with_name(target.name + ".lock")):
            if not (target / "HEAD").exists():
                partial = target.with_name(f"{target.name}.partial-{secrets.token_hex(4)}")
                try:
                    git(["clone", "--bare", "--quiet", "--", repo, str(partial)], cwd=self.cache_dir,
                        timeout_s=1800, retryable=True)  # fmt: skip
                    partial.rename(target)
                finally:
                    shutil.rmtree(partial, ignore_errors=True)
                (target / _FETCHED_MARK).touch()
        return target

    def _fetch_if_stale(self, local: Path, common: Path) -> None:
        """Fetch a cloned URL's branches and tags (caller holds the repository's lock)."""
        mark = common / _FETCHED_MARK
        try:
            if time.time() - mark.stat().st_mtime < self.fetch_ttl_s:
                return
        except FileNotFoundError:
            pass
        # Branches land on refs/heads as the remote has them; fanflow's own branches stay (no prune).
        git(["fetch", "--quiet", "--tags", "--force", "origin", "+refs/heads/*:refs/heads/*"], cwd=local,
            timeout_s=1800, retryable=True)  # fmt: skip
        mark.touch()

    def _root(self, common: Path) -> Path:
        return self.root if self.root is not None else common / _ROOT_NAME

    # --- worktrees --------------------------------------------------------------------------------

    def create(self, repo: str, ref: str, name_hint: str) -> Worktree:
        """A new worktree of ``repo`` at ``ref`` on a new branch ``fanflow/<name_hint>-<random>``.

        Raises:
            GitError: the repository, the ref or ``git worktree add`` failed.
        """
        local = self.local_repo(repo)
        common = _common_dir(local)
        if common not in self._cleaned:  # the first use in this process cleans up after dead runs
            self._cleaned.add(common)
            self._register(local)
            self._cleanup(local, common)
        root = self._root(common)
        root.mkdir(parents=True, exist_ok=True)
        hint = _UNSAFE.sub("-", name_hint).strip("-")[:80] or "run"
        name = f"{hint}-{secrets.token_hex(4)}"
        branch, path, record = f"fanflow/{name}", root / name, root / f"{name}.json"
        with repo_lock(common / LOCK_NAME):
            if is_git_url(repo):
                self._fetch_if_stale(local, common)
            resolved = git(["rev-parse", "--verify", "--quiet", "--end-of-options", f"{ref}^{{commit}}"],
                           cwd=local, check=False)  # fmt: skip
            if resolved.returncode != 0:
                raise GitError(f"ref {ref!r} is not a commit of {redact(repo)}")
            base = resolved.stdout.strip()
            # The record first: a crash after it and before the add leaves nothing unrecorded.
            _write_record(record, path=path, branch=branch, base=base, common=common)
            try:
                git(["worktree", "add", "--quiet", "--no-checkout", "-b", branch, str(path), base], cwd=local)
            except GitError:
                record.unlink(missing_ok=True)
                raise
        worktree = Worktree(path=path, branch=branch, base=base, repo=local, record=record)
        try:
            git(["reset", "--hard", "--quiet"], cwd=path)  # the checkout, outside the lock
        except GitError:
            self.remove(worktree)
            raise
        return worktree

    def remove(self, worktree: Worktree) -> None:
        """Remove the worktree's directory and git's record of it; its branch stays.

        Raises:
            GitError: git could not remove it (the directory is deleted all the same).
        """
        common = _common_dir(worktree.repo)
        with repo_lock(common / LOCK_NAME):
            _remove_locked(worktree.repo, worktree.path)
        worktree.record.unlink(missing_ok=True)

    def _register(self, local: Path) -> None:
        """Remember ``local`` in this host's registry (once; appends are atomic for short lines)."""
        line = f"{local.resolve()}\n"
        try:
            self.registry.parent.mkdir(parents=True, exist_ok=True)
            known = self.registry.read_text(encoding="utf-8") if self.registry.exists() else ""
            if line not in known.splitlines(keepends=True):
                with self.registry.open("a", encoding="utf-8") as file:
                    file.write(line)
        except OSError:
            logger.warning("fanflow: cannot record %s in %s", local, self.registry)

    def cleanup_known(self) -> list[Path]:
        """Clean up after dead runs in every repository this host made worktrees in (worker start).

        Returns:
            The removed worktrees' paths.
        """
        try:
            paths = self.registry.read_text(encoding="utf-8").splitlines()
        except OSError:
            return []
        removed: list[Path] = []
        for path in dict.fromkeys(p for p in paths if p.strip()):
            local = Path(path)
            if not local.exists():
                continue
            try:
                common = _common_dir(local)
                self._cleaned.add(common)
                removed += self._cleanup(local, common)
            except (GitError, OSError) as exc:
                logger.warning("fanflow: could not clean up worktrees of %s: %s", local, exc)
        return removed

    def cleanup(self, repo: str) -> list[Path]:
        """Remove the worktrees whose owning process died on this host, then ``git worktree prune``.

        What a dead run left uncommitted is committed on its branch first; a worktree whose work
        cannot be committed is kept (and logged).

        Returns:
            The removed worktrees' paths.
        """
        try:
            local = self.local_repo(repo, clone=False)
            common = _common_dir(local)
        except GitError:
            return []
        return self._cleanup(local, common)

    def _cleanup(self, local: Path, common: Path) -> list[Path]:
        root = self._root(common)
        removed: list[Path] = []
        with repo_lock(common / LOCK_NAME):
            for record_path in sorted(root.glob("*.json")) if root.is_dir() else []:
                record = _read_record(record_path)
                if record is None or record.get("common_dir") != str(common) or _owner_alive(record):
                    continue
                path = Path(str(record.get("path")))
                _stop_orphan(record)  # its agent outlived the worker (a process group of its own)
                if path.is_dir() and not _salvage(path, str(record.get("branch"))):
                    continue
                if path.exists():
                    try:
                        _remove_locked(local, path)
                    except GitError as exc:
                        logger.warning("fanflow: could not remove the worktree %s: %s", path, exc)
                        continue
                    removed.append(path)
                record_path.unlink(missing_ok=True)
            git(["worktree", "prune"], cwd=local, check=False)
        return removed


def _write_record(record: Path, *, path: Path, branch: str, base: str, common: Path) -> None:
    data = {
        "pid": os.getpid(), "pid_start": _process_start(os.getpid()), "host": socket.gethostname(),
        "path": str(path), "branch": branch, "base": base, "common_dir": str(common),
        "created_at": time.time(),
    }  # fmt: skip
    partial = record.with_name(record.name + ".partial")
    partial.write_text(json.dumps(data), encoding="utf-8")
    partial.replace(record)


def note_agent(record: Path, pgid: int) -> None:
    """Add the agent's process group to a worktree's record, so a cleanup can stop it."""
    data = _read_record(record)
    if data is None:
        return
    data["agent_pgid"], data["agent_start"] = pgid, _process_start(pgid)
    partial = record.with_name(record.name + ".partial")
    partial.write_text(json.dumps(data), encoding="utf-8")
    partial.replace(record)


def _stop_orphan(record: dict[str, Any]) -> None:
    """SIGKILL the process group of an agent whose worker died, if it still runs (the same process:
    its start time matches the record's)."""
    pgid = record.get("agent_pgid")
    if not isinstance(pgid, int) or record.get("host") != socket.gethostname():
        return
    if _process_alive(pgid, record.get("agent_start")):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)
            logger.info("fanflow: stopped agent process group %d left by a dead worker", pgid)


def _read_record(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _remove_locked(repo: Path, path: Path) -> None:
    """``git worktree remove --force`` (caller holds the lock); falls back to deleting and pruning."""
    done = git(["worktree", "remove", "--force", "--force", str(path)], cwd=repo, check=False)
    if done.returncode == 0 and not path.exists():
        return
    shutil.rmtree(path, ignore_errors=True)
    git(["worktree", "prune"], cwd=repo, check=False)
    if path.exists():
        raise GitError(f"could not remove {path}: {done.stderr.strip()[-400:]}")


def _salvage(path: Path, branch: str) -> bool:
    """Commit what a dead run left in its worktree; False when that failed (keep the worktree)."""
    try:
        commit_all(path, f"fanflow: work left by a run whose process died ({branch})")
    except GitError as exc:
        logger.warning("fanflow: kept the worktree %s: its work could not be committed: %s", path, exc)
        return False
    return True


def cleanup_worktrees(
    repo: str, *, root: Path | str | None = None, cache_dir: Path | str | None = None
) -> list[Path]:
    """Remove the worktrees of ``repo`` whose owning process died on this host; prune git's records.

    Meant for worker start. A URL repository without a clone on this host has nothing to clean.

    Returns:
        The removed worktrees' paths.
    """
    return WorktreeManager(root=root, cache_dir=cache_dir).cleanup(repo)
