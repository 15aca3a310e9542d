"""``fanflow map``: one command run once per input, N at a time — the ``xargs -P`` pattern as one job.

The command is a string split the way a shell splits words (``shlex.split``: quotes group, a
backslash escapes) but never run by a shell: each input reaches the command inside the argument
that names ``{}`` (``"Write tests for {}"`` stays one argument whatever the input holds), or as an
argument of its own at the end when no argument names ``{}`` (like ``xargs``).

Each input is one ``AgentRun`` branch: the input is the subtask's variable ``input`` and the argv
template uses ``{input}`` where the command said ``{}``. Anything else in the command that looks
like a placeholder (``{name}``) is kept as written: its ``{`` becomes the variable ``lbrace``.
Branch keys are the input's position and a slug of it (``i001-src-api-users-ts``).
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, TextIO

from rich.table import Table
from rich.text import Text

from fanflow.errors import SpecError
from fanflow.executors.agent.gitcmd import GitError, git
from fanflow.result import JobResult, OutcomeStatus, SubtaskOutcome
from fanflow.spec import FanOut, validate_fanout

__all__ = [
    "INPUT_VAR",
    "all_succeeded",
    "argv_template",
    "build_map",
    "git_toplevel",
    "input_keys",
    "map_summary",
    "read_inputs",
    "result_table",
]

#: The subtask variable holding a branch's input.
INPUT_VAR = "input"
#: The subtask variable holding ``{``, so a ``{name}`` the user wrote is not taken for a placeholder.
_BRACE_VAR = "lbrace"
_PLACEHOLDER = re.compile(r"\{(?=[A-Za-z_][A-Za-z0-9_]*\})")
_SLUG = re.compile(r"[^a-z0-9]+")
_KEY_LIMIT = 128
_SHOWN_FILES = 3
_SUMMARY_FIELDS = ("exit_code", "changed_files", "git_branch")
_SHOWN_ERROR_CHARS = 160
#: A failed input is tried again for these (as ``RetryPolicy.retry_on``): any agent failure, a timeout.
_RETRY_ON = ["AgentError", "TimeoutError", "ConnectionError"]
_STYLE = {OutcomeStatus.SUCCEEDED: "green", OutcomeStatus.FAILED: "red", OutcomeStatus.CANCELLED: "yellow",
          OutcomeStatus.SKIPPED: "dim",
          OutcomeStatus.BLOCKED: "magenta"}  # fmt: skip


def argv_template(command: str) -> tuple[list[str], bool]:
    """The argv template of ``command``, and whether it holds ``{`` kept as written.

    Raises:
        SpecError: the command is empty or its quotes do not close.
    """
    try:
        words = shlex.split(command)
    except ValueError as exc:
        raise SpecError(f"--command: cannot split {command!r}: {exc}", field="command") from None
    if not words:
        raise SpecError("--command: the command is empty", field="command")
    escaped = [_PLACEHOLDER.sub("{" + _BRACE_VAR + "}", word) for word in words]
    braces = escaped != words
    argv = [word.replace("{}", "{" + INPUT_VAR + "}") for word in escaped]
    if argv == escaped:  # no argument names {}: the input is the last argument
        argv.append("{" + INPUT_VAR + "}")
    return argv, braces


def read_inputs(arguments: Sequence[str], source: str | None, stdin: TextIO) -> list[str]:
    """The inputs: the arguments, or the lines of ``source`` (``-``: stdin); blank lines are skipped.

    Raises:
        SpecError: both or neither given, the file cannot be read, or it holds no input.
    """
    if source is None:
        if not arguments:
            raise SpecError("no inputs: give them as arguments, or one per line with --from FILE (- : stdin)")
        return list(arguments)
    if arguments:
        raise SpecError("give the inputs as arguments or with --from, not both")
    try:
        text = stdin.read() if source == "-" else Path(source).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise SpecError(f"--from: cannot read {source!r}: {reason}", field="from") from None
    inputs = [line.rstrip("\r") for line in text.split("\n") if line.strip()]
    if not inputs:
        raise SpecError(f"--from: {'stdin' if source == '-' else repr(source)} holds no input")
    return inputs


def input_keys(inputs: Sequence[str]) -> list[str]:
    """One branch key per input: its position and a slug of it (``i001-src-api-users-ts``)."""
    width = max(3, len(str(len(inputs))))
    keys = []
    for index, text in enumerate(inputs, start=1):
        prefix = f"i{index:0{width}d}"
        slug = _SLUG.sub("-", text.lower()).strip("-")
        keys.append(f"{prefix}-{slug}"[:_KEY_LIMIT].rstrip("-") if slug else prefix)
    return keys


def git_toplevel(path: Path) -> str:
    """The top level of the git work tree ``path`` is in.

    Raises:
        SpecError: ``path`` is not inside a git work tree.
    """
    try:
        done = git(["rev-parse", "--show-toplevel"], cwd=path, check=False)
    except GitError as exc:
        raise SpecError(f"--worktree: {exc}") from None
    top = done.stdout.strip()
    if done.returncode != 0 or not top:
        raise SpecError(f"--worktree: {path} is not inside a git work tree", field="worktree")
    return top


def build_map(
    command: str,
    inputs: Sequence[str],
    *,
    name: str | None = None,
    concurrency: int = 4,
    timeout_s: float | None = None,
    retries: int = 0,
    repo: str | None = None,
    workdir: str | None = None,
    env: Iterable[str] = (),
) -> FanOut:
    """The fan-out running ``command`` once per input.

    Args:
        command: the command line, split like a shell would split it; ``{}`` marks the input.
        inputs: one branch each, in this order.
        name: the job's name (default ``map <program>``).
        concurrency: the job's ``max_concurrency``.
        timeout_s: each run's timeout (its process group is stopped).
        retries: how many more times a failed run is tried.
        repo: each input runs in its own worktree of this repository (on a branch of its own).
        workdir: else, every input runs in this directory.
        env: names of the environment variables the command gets besides PATH, HOME and the like.

    Raises:
        SpecError: a bad command or setting (naming it).
    """
    argv, braces = argv_template(command)
    variables: dict[str, str] = {_BRACE_VAR: "{"} if braces else {}
    run: dict[str, Any] = {"kind": "agent", "argv": argv, "env": list(env), "timeout_s": timeout_s}
    if repo is not None:
        run |= {"repo": repo, "worktree": True}
    elif workdir is not None:
        run["workdir"] = workdir
    retry = {"attempts": retries + 1, "backoff_s": 1.0, "retry_on": _RETRY_ON}
    subtasks = [
        {"key": key, "run": run, "vars": {**variables, INPUT_VAR: text}, "retry": retry}
        for key, text in zip(input_keys(inputs), inputs, strict=True)
    ]
    spec = {
        "name": name or f"map {os.path.basename(argv[0])}", "subtasks": subtasks,
        "merge": {"strategy": "custom", "function": f"{__name__}:map_summary"},
        "failure": {"policy": "best_effort"}, "max_concurrency": concurrency,
    }  # fmt: skip
    return validate_fanout(spec, source="fanflow map")


def map_summary(outcomes: list[SubtaskOutcome], *, context: Any = None) -> dict[str, Any]:
    """The merge of a map: per succeeded key its exit code, changed files and branch (no output tails)."""
    summary: dict[str, Any] = {}
    for outcome in outcomes:
        output = outcome.output if isinstance(outcome.output, dict) else {}
        summary[outcome.key] = {name: output.get(name) for name in _SUMMARY_FIELDS}
    return summary


def all_succeeded(result: JobResult) -> bool:
    """True when every input's run succeeded."""
    return all(outcome.succeeded for outcome in result.outcomes)


def _detail(outcome: SubtaskOutcome) -> str:
    output = outcome.output if isinstance(outcome.output, dict) else {}
    if outcome.error is not None and not outcome.succeeded:
        message = " ".join(outcome.error.message.split())
        if len(message) > _SHOWN_ERROR_CHARS:
            message = message[: _SHOWN_ERROR_CHARS - 1] + "…"
        return f"{outcome.error.type}: {message}"
    listed = output.get("changed_files")
    files = listed if isinstance(listed, list) else []
    shown = ", ".join(str(name) for name in files[:_SHOWN_FILES])
    more = f" (+{len(files) - _SHOWN_FILES} more)" if len(files) > _SHOWN_FILES else ""
    branch = output.get("git_branch")
    return shown + more + (f" on {branch}" if branch else "")


def result_table(result: JobResult, fanout: FanOut) -> Table:
    """One row per input: the input, status, exit code, seconds, and changed files or the error."""
    table = Table(title=f"{result.name} — job {result.job_id}", title_justify="left")
    for column in ("input", "status", "exit code", "seconds", "changed files / error"):
        table.add_column(column, justify="right" if column in ("exit code", "seconds") else "left")
    for outcome in result.outcomes:
        text = str(fanout.subtask(outcome.key).vars.get(INPUT_VAR, outcome.key))
        output = outcome.output if isinstance(outcome.output, dict) else {}
        code = output.get("exit_code")
        seconds = f"{outcome.duration_s:.1f}" if outcome.duration_s is not None else ""
        table.add_row(Text(text), Text(outcome.status.value, style=_STYLE[outcome.status]),
                      "" if code is None else str(code), seconds, Text(_detail(outcome)))  # fmt: skip
    return table
