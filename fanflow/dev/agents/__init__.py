"""Stand-in coding agents for offline demos and tests: ``claude`` and ``codex`` that need no account.

``AGENTS_DIR`` holds two executable scripts named like the real CLIs (so the agent executor parses
their output as it parses Claude Code's and Codex's): put it first on PATH (``fanflow run
--fake-agents``, ``fanflow map --fake-agents``) or name them by absolute path in an argv. They act on
their prompt (``_fake.py`` lists the directives; a prompt asking for "tests for FILE" gets a test
file written next to FILE, under ``tests/``) and print what the real agent would print: Claude Code's
``--output-format json`` result object, Codex's ``--json`` events. They need only the standard library.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["AGENTS_DIR"]

#: The directory of the ``claude`` and ``codex`` stand-ins.
AGENTS_DIR = Path(__file__).resolve().parent
