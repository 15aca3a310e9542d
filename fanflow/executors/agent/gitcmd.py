"""Running git for the agent executor: argv lists, no prompts, no inherited repository variables.

Every call gets the worker's environment minus the variables that would point git at another
repository (``GIT_DIR``, ``GIT_INDEX_FILE`` ...), with ``GIT_TERMINAL_PROMPT=0`` so a fetch that needs
credentials fails instead of waiting for a terminal, and ``LC_ALL=C`` so messages are stable.
Credentials in a repository URL never reach an error message (``https://***@host/...``).
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

from fanflow.errors import ExecutorError

__all__ = ["COMMIT_IDENTITY", "GitError", "commit_all", "git", "git_bounded", "redact"]

#: Variables that would make a git call act on another repository, index or work tree.
_LOCATION_VARS = (
    "GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_COMMON_DIR", "GIT_OBJECT_DIRECTORY",
    "GIT_ALTERNATE_OBJECT_DIRECTORIES", "GIT_NAMESPACE", "GIT_PREFIX", "GIT_CEILING_DIRECTORIES",
)  # fmt: skip

#: The fixed author and committer of the commits that carry an agent's work.
COMMIT_IDENTITY = {
    "GIT_AUTHOR_NAME": "fanflow",
    "GIT_AUTHOR_EMAIL": "fanflow@localhost",
    "GIT_COMMITTER_NAME": "fanflow",
    "GIT_COMMITTER_EMAIL": "fanflow@localhost",
}

#: Settings for the commits fanflow makes: unsigned, and no repository hook runs.
_COMMIT_CONFIG = ("-c", "commit.gpgsign=false", "-c", "core.hooksPath=/dev/null")

_USERINFO = re.compile(r"(?<=://)[^/@\s]+@")
_DEFAULT_TIMEOUT_S = 300.0


class GitError(ExecutorError):
    """A git command failed. ``retryable`` is set by the caller (a failed fetch may be worth another go)."""

    def __init__(self, message: str, *, retryable: bool = False) -> None:
        self.retryable = retryable
        super().__init__(message)


def redact(text: str) -> str:
    """``text`` with the user and password of every URL in it replaced by ``***``."""
    return _USERINFO.sub("***@", text)


def _environment(extra: Mapping[str, str] | None) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if name not in _LOCATION_VARS}
    env["GIT_TERMINAL_PROMPT"] = "0"
    env["LC_ALL"] = "C"
    if extra:
        env.update(extra)
    return env


def _describe(args: Sequence[str]) -> str:
    shown = " ".join(args[:4]) + (" ..." if len(args) > 4 else "")
    return redact(f"git {shown}")


def git(
    args: Sequence[str],
    *,
    cwd: Path | str,
    env: Mapping[str, str] | None = None,
    check: bool = True,
    timeout_s: float = _DEFAULT_TIMEOUT_S,
    retryable: bool = False,
) -> subprocess.CompletedProcess[str]:
    """Run ``git args`` in ``cwd`` and capture its output as text.

    Args:
        args: the arguments after ``git``.
        cwd: where to run it.
        env: variables added to the cleaned worker environment.
        check: raise on a non-zero exit.
        timeout_s: give up (and kill git) after this long.
        retryable: what a ``GitError`` raised by this call says about retrying.

    Raises:
        GitError: git could not be started, ran too long, or (with ``check``) exited non-zero;
            the message holds the command and the end of git's stderr.
    """
    try:
        done = subprocess.run(
            ["git", *args], cwd=cwd, env=_environment(env), stdin=subprocess.DEVNULL,
            capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=timeout_s,
            check=False,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        raise GitError(f"{_describe(args)} ran longer than {timeout_s:g}s", retryable=True) from None
    except OSError as exc:
        raise GitError(f"{_describe(args)} could not start: {exc.strerror or exc}") from None
    if check and done.returncode != 0:
        detail = redact(done.stderr.strip()[-800:]) or f"exit code {done.returncode}"
        raise GitError(f"{_describe(args)} failed: {detail}", retryable=retryable)
    return done


def git_bounded(
    args: Sequence[str], *, cwd: Path | str, limit: int, env: Mapping[str, str] | None = None
) -> tuple[str, bool]:
    """Run ``git args`` and keep at most ``limit`` bytes of its stdout.

    Returns:
        The text (decoded as UTF-8, bad bytes replaced) and whether it was cut at ``limit``.

    Raises:
        GitError: git could not be started or exited non-zero (a cut-off run is not an error).
    """
    # stderr goes to a file, so a chatty stderr can never block the bounded read of stdout.
    with tempfile.TemporaryFile() as errors:
        try:
            process = subprocess.Popen(
                ["git", *args], cwd=cwd, env=_environment(env), stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=errors,
            )  # fmt: skip
        except OSError as exc:
            raise GitError(f"{_describe(args)} could not start: {exc.strerror or exc}") from None
        with process:
            assert process.stdout is not None
            data = process.stdout.read(limit + 1)
            truncated = len(data) > limit
            if truncated:
                process.kill()
            process.stdout.close()
            process.wait(timeout=_DEFAULT_TIMEOUT_S)
        if not truncated and process.returncode != 0:
            errors.seek(0)
            text = errors.read().decode("utf-8", "replace").strip()[-800:]
            raise GitError(f"{_describe(args)} failed: {redact(text) or f'exit {process.returncode}'}")
    return data[:limit].decode("utf-8", "replace"), truncated


def commit_all(path: Path, message: str) -> str | None:
    """Stage everything in the work tree at ``path`` (untracked files too) and commit it.

    The commit has fanflow's fixed identity, is never signed and runs no hooks.

    Returns:
        The new commit's id, or None when there was nothing to commit.

    Raises:
        GitError: staging or committing failed.
    """
    git(["add", "-A"], cwd=path)
    staged = git(["diff", "--cached", "--quiet"], cwd=path, check=False)
    if staged.returncode == 0:
        return None
    if staged.returncode != 1:
        raise GitError(f"git diff --cached failed: {staged.stderr.strip()[-400:]}")
    git([*_COMMIT_CONFIG, "commit", "--quiet", "--no-verify", "-m", message], cwd=path, env=COMMIT_IDENTITY)
    return git(["rev-parse", "HEAD"], cwd=path).stdout.strip()
