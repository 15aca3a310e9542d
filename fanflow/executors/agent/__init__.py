"""The ``agent`` executor: CLI coding agents (Claude Code, Codex, any command) as branches.

Each attempt runs the filled-in argv (never a shell string) in a git worktree of its own on a
branch of its own (``worktree: true``), in a ``workdir``, or in a temporary directory; with only
the allowed environment; in its own process group, stopped whole on timeout. Its work is committed
on its branch before the worktree is removed, and its output object carries the exit code, the
tails of stdout and stderr, the diff, the changed files, the branch and the JSON the agent
printed, whose tokens and cost become the branch's usage.

Call ``cleanup_worktrees(repo)`` at worker start to remove the worktrees of dead runs.
"""

from fanflow.executors.agent.argv import check_agent_templates, render_agent_argv
from fanflow.executors.agent.executor import AGENT_EXECUTOR, AgentExecutor, PreparedAgent
from fanflow.executors.agent.failures import (
    AgentError,
    AgentFailedError,
    AgentRateLimitedError,
    AgentTimeoutError,
)
from fanflow.executors.agent.parse import AgentReport, parse_agent_output
from fanflow.executors.agent.process import ProcessResult, agent_environment, run_process
from fanflow.executors.agent.worktrees import Worktree, WorktreeManager, cleanup_worktrees

__all__ = [
    "AGENT_EXECUTOR",
    "AgentError",
    "AgentExecutor",
    "AgentFailedError",
    "AgentRateLimitedError",
    "AgentReport",
    "AgentTimeoutError",
    "PreparedAgent",
    "ProcessResult",
    "Worktree",
    "WorktreeManager",
    "agent_environment",
    "check_agent_templates",
    "cleanup_worktrees",
    "parse_agent_output",
    "render_agent_argv",
    "run_process",
]
