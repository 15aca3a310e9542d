"""A stand-in for ``codex exec --json PROMPT``: acts on the prompt, prints Codex's JSONL events.

The prompt's directives are described in ``_fake.py``. With ``--json`` it prints ``thread.started``,
then per turn ``turn.started``, an ``item.completed`` agent message and ``turn.completed`` with its
``usage`` (or ``turn.failed`` for a ``fail`` directive), plus an ``item.completed`` of type
``fake_info`` carrying its ``argv`` and ``environ``. Otherwise it prints the result text.
"""

from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.realpath(__file__)))

from _fake import act, environ, prompt_after

_VALUED = {"-m", "--model", "-c", "--config", "-s", "--sandbox", "-C", "--cd", "-o", "--output-last-message"}


def _event(data: dict[str, object]) -> None:
    print(json.dumps(data), flush=True)


def main(args: list[str]) -> int:
    """Act on the prompt and print the events."""
    if args[:1] == ["exec"]:
        args = args[1:]
    plan = act(prompt_after(args, _VALUED))
    usage = plan.usage or [1000, 400, 50]
    if "--json" not in args:
        print(plan.fail[1] if plan.fail else plan.result, flush=True)
        return plan.exit_code or (1 if plan.fail else 0)
    _event({"type": "thread.started", "thread_id": "fake-thread"})
    _event({"type": "item.completed", "item": {"id": "info", "type": "fake_info", "argv": args,
                                               "environ": environ()}})  # fmt: skip
    for turn in range(plan.turns):
        _event({"type": "turn.started"})
        if plan.fail and turn == plan.turns - 1:
            _event({"type": "turn.failed", "error": {"message": plan.fail[1]}})
            break
        _event({"type": "item.completed", "item": {"id": f"item_{turn}", "type": "agent_message",
                                                   "text": plan.result}})  # fmt: skip
        _event({"type": "turn.completed", "usage": {"input_tokens": int(usage[0]),
                "cached_input_tokens": int(usage[1]), "output_tokens": int(usage[2])}})  # fmt: skip
    return plan.exit_code or (1 if plan.fail else 0)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
