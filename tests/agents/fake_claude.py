"""A stand-in for ``claude -p PROMPT --output-format json``: acts on the prompt, prints Claude's result.

The prompt's directives are described in ``_fake.py``. With ``--output-format json`` it prints one
line: the object Claude Code prints (``type: "result"``, ``subtype``, ``is_error``, ``num_turns``,
``result``, ``total_cost_usd``, ``usage`` ...) plus ``argv`` (its arguments, as received), ``cwd``
and ``environ``, so tests can see what reached it. Otherwise it prints the result text.
"""

from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.realpath(__file__)))

from _fake import act, environ, prompt_after

_VALUED = {
    "--output-format", "--allowedTools", "--allowed-tools", "--max-turns", "--model", "--max-budget-usd",
    "--permission-mode", "--append-system-prompt", "--disallowedTools",
}  # fmt: skip


def main(args: list[str]) -> int:
    """Act on the prompt and print the result."""
    plan = act(prompt_after(args, _VALUED))
    usage = plan.usage or [12, 34, 100, 20, 0.0123]
    subtype, text = plan.fail if plan.fail else ("success", plan.result)
    is_error = plan.fail is not None
    if "json" in [args[i + 1] for i, arg in enumerate(args[:-1]) if arg == "--output-format"]:
        report = {
            "type": "result", "subtype": subtype, "is_error": is_error, "duration_ms": 1234,
            "duration_api_ms": 1000, "num_turns": plan.turns, "result": text, "session_id": "fake-session",
            "total_cost_usd": usage[4] if len(usage) > 4 else 0.0,
            "usage": {"input_tokens": int(usage[0]), "output_tokens": int(usage[1]),
                      "cache_read_input_tokens": int(usage[2]), "cache_creation_input_tokens": int(usage[3])},
            "modelUsage": {"claude-sonnet-4-5": {"inputTokens": int(usage[0]),
                                                 "outputTokens": int(usage[1])}},
            "argv": args, "cwd": os.getcwd(), "environ": environ(),
        }  # fmt: skip
        print(json.dumps(report), flush=True)
    else:
        print(text, flush=True)
    if plan.exit_code:
        return plan.exit_code
    return 1 if is_error else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
