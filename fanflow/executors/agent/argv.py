"""Filling an ``AgentRun``'s argv template: every substitution stays inside its own argument.

``{key}``, ``{context}``, the subtask's ``vars``, ``{prompt}`` (the spec's ``prompt``, itself filled
from the same variables first) and ``{allowed_tools}`` (the comma-joined list) are replaced inside
the argument that names them: ``"Write tests for {file}"`` stays one argument whatever ``file`` holds
(quotes, ``$(...)``, ``;``, backticks and newlines arrive as written: no shell ever sees them). Only
``{identifier}`` is a placeholder; other braces stay. An unknown name is a ``SpecError`` naming it.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Mapping, Sequence
from typing import Any

from fanflow.errors import SpecError
from fanflow.executors.llm.templates import placeholders, render
from fanflow.spec import AgentRun

__all__ = ["agent_kind", "check_agent_templates", "codex_model", "render_agent_argv"]

_ALLOWED_TOOLS_FLAGS = ("--allowedTools", "--allowed-tools")


def _unknown(text: str, known: Collection[str], path: str, *, hint: str = "") -> None:
    unknown = [name for name in placeholders(text) if name not in known]
    if not unknown:
        return
    listed = ", ".join("{" + name + "}" for name in unknown)
    noun = "variable" if len(unknown) == 1 else "variables"
    known_text = ", ".join(sorted(known)) or "(none)"
    raise SpecError(f"{path}: unknown template {noun} {listed}; known: {known_text}{hint}", field=path)


def check_agent_templates(run: AgentRun, names: Collection[str], *, field: str) -> None:
    """Check that every placeholder of the run's ``prompt`` and ``argv`` will be filled in.

    ``names`` are the branch's variables (``context``, ``key`` and its ``vars``); ``allowed_tools``
    is known everywhere, ``prompt`` in argv when the run has a prompt.

    Args:
        run: the agent run.
        names: the variables it will be rendered with.
        field: dotted path of the run in its spec (``subtasks.2.run``).

    Raises:
        SpecError: naming the first argument (``subtasks.2.run.argv.3``) or the prompt with an
            unknown placeholder.
    """
    known = {*names, "allowed_tools"}
    if run.prompt is not None:
        _unknown(run.prompt, known, f"{field}.prompt")
    argv_known = known | {"prompt"} if run.prompt is not None else known
    hint = " ({prompt} needs the run's 'prompt')" if run.prompt is None and "prompt" not in known else ""
    for index, argument in enumerate(run.argv):
        _unknown(argument, argv_known, f"{field}.argv.{index}", hint=hint if "{prompt}" in argument else "")


def render_agent_argv(run: AgentRun, variables: Mapping[str, Any]) -> tuple[list[str], str | None]:
    """The run's argv with every placeholder filled in, and its filled-in prompt.

    When ``allowed_tools`` is not empty, argv[0] is ``claude`` and argv names no ``--allowedTools``,
    ``--allowedTools <comma list>`` is appended.

    Raises:
        SpecError: an unknown placeholder, or an argument holding a NUL byte (no process can get it).
    """
    check_agent_templates(run, variables.keys(), field="run")
    tools = ",".join(run.allowed_tools)
    base = {**variables, "allowed_tools": tools}
    prompt = render(run.prompt, base) if run.prompt is not None else None
    filled = base if prompt is None else {**base, "prompt": prompt}
    argv = [render(argument, filled) for argument in run.argv]
    for index, argument in enumerate(argv):
        if "\0" in argument:
            raise SpecError(
                f"run.argv.{index}: the filled-in argument holds a NUL byte", field=f"run.argv.{index}"
            )
    if run.allowed_tools and agent_kind(argv) == "claude" and not _names_allowed_tools(argv):
        argv += ["--allowedTools", tools]
    return argv, prompt


def _names_allowed_tools(argv: Sequence[str]) -> bool:
    return any(arg in _ALLOWED_TOOLS_FLAGS or arg.startswith(("--allowedTools=", "--allowed-tools="))
               for arg in argv[1:])  # fmt: skip


def agent_kind(argv: Sequence[str]) -> str | None:
    """``claude`` or ``codex`` when argv[0]'s basename names one of them, else None."""
    name = os.path.basename(argv[0]) if argv else ""
    return name if name in ("claude", "codex") else None


def codex_model(argv: Sequence[str]) -> str | None:
    """The model a Codex command line names: ``-m M``, ``--model M``, ``--model=M`` or ``-c model=M``."""
    model: str | None = None
    for index, arg in enumerate(argv[1:], start=1):
        following = argv[index + 1] if index + 1 < len(argv) else None
        if arg in ("-m", "--model") and following is not None:
            model = following
        elif arg.startswith("--model="):
            model = arg.partition("=")[2]
        elif arg in ("-c", "--config") and following is not None and following.startswith("model="):
            model = following.partition("=")[2].strip("\"'")
    return model or None
