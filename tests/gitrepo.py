"""Git in tests: one identity, an environment free of the caller's ``GIT_*`` variables."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

IDENTITY = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.invalid", "GIT_COMMITTER_NAME": "t",
            "GIT_COMMITTER_EMAIL": "t@example.invalid"}  # fmt: skip


def git_env() -> dict[str, str]:
    """This environment without ``GIT_*`` (a hook's ``GIT_DIR`` …), plus the test identity."""
    return {name: value for name, value in os.environ.items() if not name.startswith("GIT_")} | IDENTITY


def sh_git(repo: Path, *args: str, check: bool = True) -> str:
    """``git ARGS`` in ``repo``; its stdout."""
    done = subprocess.run(
        ["git", *args], cwd=repo, env=git_env(), capture_output=True, text=True, check=check
    )
    return done.stdout
