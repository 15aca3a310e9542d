"""The ``agent`` executor: one CLI coding-agent process per attempt, in a worktree, workdir or temp dir.

prepare fills the argv template (``argv.py``); execute makes the working directory
(``workspace.py``), runs the process in its own process group with only the allowed environment
(``process.py``), reads what the agent reports about itself (``parse.py``), commits its work on its
branch, removes the worktree, and either returns the output object or raises the failure's class
(``failures.py``) with that output attached.

The output object: ``exit_code``, ``timed_out``, ``stdout`` / ``stderr`` (the last 64 KiB of each),
``diff`` (against ``ref``, untracked files included; at most 512 KiB, ``diff_truncated`` says when
cut), ``changed_files`` (sorted), ``git_branch`` (kept after the worktree is removed), ``commit``
(the commit carrying the work on that branch), ``result`` (the JSON the agent printed, parsed),
``worktree`` (where the files are now, None once removed) and ``warnings``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fanflow.errors import OutputValidationError
from fanflow.executors import BranchInput, Execution
from fanflow.executors.agent.argv import codex_model, render_agent_argv
from fanflow.executors.agent.failures import AgentFailedError, classify_failure
from fanflow.executors.agent.gitcmd import GitError
from fanflow.executors.agent.parse import AgentReport, OutputScanner
from fanflow.executors.agent.process import TAIL_BYTES, ProcessResult, agent_environment, run_process
from fanflow.executors.agent.workspace import (
    DIFF_LIMIT,
    Changes,
    Workspace,
    close_workspace,
    collect_changes,
    open_workspace,
)
from fanflow.executors.agent.worktrees import WorktreeManager, note_agent
from fanflow.result import Usage
from fanflow.spec import AgentRun

__all__ = ["AGENT_EXECUTOR", "AgentExecutor", "PreparedAgent"]

_NOTHING = Usage()


@dataclass(frozen=True, slots=True)
class PreparedAgent:
    """An agent run with its templates filled in.

    Attributes:
        spec: the run as declared.
        key: the branch's key (names the worktree's branch).
        argv: the filled-in command line.
        prompt: the filled-in prompt (None when the run has none).
        timeout_s: the tighter of the run's and the branch's timeout.
        cancelled: True once the branch's job is cancelled (its process group is then stopped).
    """

    spec: AgentRun
    key: str
    argv: tuple[str, ...]
    prompt: str | None
    timeout_s: float | None
    cancelled: Callable[[], bool] | None = None


class AgentExecutor:
    """Runs an ``AgentRun``.

    Args:
        worktrees: makes and removes the worktrees (default: a ``WorktreeManager`` made on first
            use, configured from ``FANFLOW_WORKTREE_ROOT`` / ``FANFLOW_REPO_CACHE``).
        tail_bytes: how much of the end of stdout and stderr the output keeps.
        diff_limit: how much of the diff the output keeps.
    """

    retries_rejections = False
    enforces_timeout = True

    def __init__(
        self,
        worktrees: WorktreeManager | None = None,
        *,
        tail_bytes: int = TAIL_BYTES,
        diff_limit: int = DIFF_LIMIT,
    ) -> None:
        self._worktrees = worktrees
        self.tail_bytes = tail_bytes
        self.diff_limit = diff_limit

    @property
    def worktrees(self) -> WorktreeManager:
        """The worktree manager."""
        if self._worktrees is None:
            self._worktrees = WorktreeManager()
        return self._worktrees

    def prepare(self, spec: AgentRun, branch: BranchInput) -> PreparedAgent:
        """The command line and prompt with every template filled from the branch's variables.

        Raises:
            SpecError: an unknown placeholder (named) or an argument with a NUL byte.
        """
        argv, prompt = render_agent_argv(spec, branch.variables())
        limits = [t for t in (spec.timeout_s, branch.timeout_s) if t is not None]
        return PreparedAgent(
            spec=spec, key=branch.key, argv=tuple(argv), prompt=prompt,
            timeout_s=min(limits) if limits else None, cancelled=branch.cancelled,
        )  # fmt: skip

    def estimate(self, prepared: PreparedAgent) -> Usage:
        """Nothing: an agent does not say in advance what it will spend."""
        return _NOTHING

    def limit_keys(self, spec: AgentRun) -> list[str]:
        """None besides the subtask's own ``limits`` (name e.g. ``agent:claude`` there to cap agents)."""
        return []

    def feedback(self, prepared: PreparedAgent, rejection: OutputValidationError) -> PreparedAgent:
        """The same run (an agent is not told why its output was rejected)."""
        return prepared

    def execute(self, prepared: PreparedAgent) -> Execution:
        """Run the agent once and collect its work.

        Raises:
            AgentTimeoutError: it ran past its timeout (its process group was stopped).
            AgentRateLimitedError: it was rate limited or its provider was overloaded.
            AgentFailedError: it exited non-zero, reported an error, or could not start.
        """
        spec = prepared.spec
        try:
            workspace = open_workspace(spec, prepared.key, self.worktrees)
        except GitError as exc:
            raise AgentFailedError(
                f"could not make the agent's worktree: {exc}", retryable=exc.retryable
            ) from None
        except (OSError, ValueError) as exc:
            raise AgentFailedError(f"could not prepare the agent's working directory: {exc}") from None
        try:
            process, report = self._run(prepared, workspace)
        finally:
            changes = collect_changes(workspace, key=prepared.key, diff_limit=self.diff_limit)
            keep = spec.keep_worktree or not changes.committed
            where = close_workspace(workspace, keep=keep, manager=self.worktrees)
        output = _output(process, report, changes, workspace, where)
        failure = classify_failure(process, report, output, timeout_s=prepared.timeout_s)
        if failure is not None:
            raise failure
        return Execution(output=output, usage=report.usage, model=report.model)

    def _run(self, prepared: PreparedAgent, workspace: Workspace) -> tuple[ProcessResult, AgentReport]:
        spec = prepared.spec
        scanner = OutputScanner(codex_model=codex_model(prepared.argv))
        try:
            process = run_process(
                prepared.argv, cwd=workspace.path, env=agent_environment(spec.env),
                timeout_s=prepared.timeout_s, kill_grace_s=spec.kill_grace_s, tail_bytes=self.tail_bytes,
                on_stdout_line=scanner.feed, should_stop=prepared.cancelled,
                on_start=_recorder(workspace),
            )  # fmt: skip
        except OSError as exc:
            raise AgentFailedError(f"could not start {prepared.argv[0]!r}: {exc.strerror or exc}") from None
        return process, scanner.report(process.stdout)


def _recorder(workspace: Workspace) -> Callable[[int], None] | None:
    """Notes the agent's process group in its worktree's record (a cleanup after its worker died
    stops it); None without a worktree."""
    worktree = workspace.worktree
    if worktree is None:
        return None
    record = worktree.record
    return lambda pgid: note_agent(record, pgid)


def _output(
    process: ProcessResult, report: AgentReport, changes: Changes, workspace: Workspace, where: str | None
) -> dict[str, Any]:
    worktree = workspace.worktree
    return {
        "exit_code": process.exit_code, "timed_out": process.timed_out,
        "stdout": process.stdout, "stderr": process.stderr,
        "diff": changes.diff, "diff_truncated": changes.diff_truncated,
        "changed_files": changes.changed_files,
        "git_branch": worktree.branch if worktree is not None else None, "commit": changes.commit,
        "result": report.result, "worktree": where, "warnings": list(workspace.warnings),
    }  # fmt: skip


AGENT_EXECUTOR = AgentExecutor()
