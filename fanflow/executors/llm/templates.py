"""Prompt templates: ``{identifier}`` placeholders, and nothing else.

Only a brace pair around a plain identifier (``{context}``, ``{key}``, ``{topic_2}``) is a
placeholder. Everything else is text and stays as written: JSON in a prompt (``{"a": 1}``),
``{ x }``, ``{1}``, ``{a.b}``, a lone ``{``. There is no escaping and no format spec, so a prompt
never breaks the way ``str.format`` breaks on JSON.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Mapping
from typing import Any

from fanflow.errors import SpecError
from fanflow.spec import LLMCall

__all__ = ["check_call_templates", "placeholders", "render", "template_fields"]

_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


def placeholders(text: str) -> list[str]:
    """Names of the ``{identifier}`` placeholders of ``text``, in order of first use, each once."""
    return list(dict.fromkeys(_PLACEHOLDER.findall(text)))


def _as_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False)


def render(text: str, variables: Mapping[str, Any]) -> str:
    """Substitute every ``{identifier}`` of ``text`` from ``variables``.

    Strings go in as they are; anything else as JSON (``ensure_ascii=False``).

    Raises:
        KeyError: a placeholder's name is not in ``variables`` (the error's argument is the name).
    """
    if "{" not in text:
        return text

    def substitute(match: re.Match[str]) -> str:
        return _as_text(variables[match.group(1)])

    return _PLACEHOLDER.sub(substitute, text)


def template_fields(call: LLMCall) -> list[tuple[str, str]]:
    """``(relative field, text)`` of every templated part of a call: system, prompt, messages."""
    fields: list[tuple[str, str]] = []
    if call.system is not None:
        fields.append(("system", call.system))
    if call.prompt is not None:
        fields.append(("prompt", call.prompt))
    for index, message in enumerate(call.messages or ()):
        fields.append((f"messages.{index}.content", message.content))
    return fields


def check_call_templates(call: LLMCall, names: Collection[str], *, field: str) -> None:
    """Check that every placeholder of ``call`` is one of ``names``.

    Args:
        call: the model call.
        names: the variables the call will be rendered with.
        field: dotted path of the call in its spec, e.g. ``subtasks.2.run``.

    Raises:
        SpecError: naming the first field with an unknown placeholder (e.g.
            ``subtasks.2.run.prompt: unknown template variable {topic}; known: context, key``),
            with ``field`` set to that field's path.
    """
    known = set(names)
    for relative, text in template_fields(call):
        unknown = [name for name in placeholders(text) if name not in known]
        if not unknown:
            continue
        path = f"{field}.{relative}" if field else relative
        listed = ", ".join("{" + name + "}" for name in unknown)
        noun = "variable" if len(unknown) == 1 else "variables"
        known_text = ", ".join(sorted(known)) or "(none)"
        raise SpecError(f"{path}: unknown template {noun} {listed}; known: {known_text}", field=path)
