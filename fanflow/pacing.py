"""Submit-time pacing: a big job on a busy key is spread over time before its messages are queued.

A job whose branches consume a key with a request rate (``window / requests`` per place) has its
own line on that key (see ``fanflow.admission.Gate``). When a job has more branches than the key
admits within the limits' in-slot wait, the producer gives each branch its place at once: branch
``i`` of the key's line gets an ETA ``i * spacing`` ahead, and the job's line in the store starts
behind the last one. Workers receive ETA messages at once and hold them without a thread, so the
queue drains at receipt speed and a small job submitted afterwards is reached in seconds, instead of
after every queued branch of the big one went through a worker to learn its place.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from fanflow.ratelimit import Limit
from fanflow.ratelimit.limiter import WINDOW_GUARD_MS
from fanflow.spec import FanOut, LLMCall

__all__ = ["SubmitPacing", "plan_pacing", "spacing_ms"]


def spacing_ms(limit: Limit) -> int:
    """One place in line per this many ms on a key with a request rate (0: no line)."""
    if not limit.requests:
        return 0
    window_ms = limit.window_ms + min(WINDOW_GUARD_MS, limit.window_ms // 20)
    return round(window_ms / limit.requests * 1.02)


@dataclass(frozen=True, slots=True)
class SubmitPacing:
    """Per branch key, its delay (ms) before its message is due; per limit key, the job's line length."""

    delays_ms: dict[str, int] = field(default_factory=dict)
    lines_ms: dict[str, int] = field(default_factory=dict)

    def etas(self, now: dt.datetime) -> dict[str, str]:
        """The ETA (ISO 8601) of each delayed branch."""
        return {key: (now + dt.timedelta(milliseconds=ms)).isoformat() for key, ms in self.delays_ms.items()}


def plan_pacing(
    spec: FanOut, limit_of: Callable[[str], Limit | None], *, in_slot_ms: int, max_delay_ms: int
) -> SubmitPacing:
    """Places in line for the branches of ``spec`` on its request-limited keys.

    A branch's delay is the latest of its places on its keys; delays within ``in_slot_ms`` are left
    to the worker (the head of the line waits in its thread); none exceeds ``max_delay_ms`` (kept
    below the broker's visibility timeout).
    """
    limits: dict[str, int] = {}
    next_place: dict[str, int] = {}
    delays: dict[str, int] = {}
    for subtask in spec.subtasks:
        keys = [*subtask.limits, *([subtask.run.model] if isinstance(subtask.run, LLMCall) else [])]
        delay = 0
        for key in dict.fromkeys(keys):
            if key not in limits:
                limit = limit_of(key)
                limits[key] = spacing_ms(limit) if limit is not None else 0
            spacing = limits[key]
            if not spacing:
                continue
            place = next_place.get(key, 0)
            delay = max(delay, place)
            next_place[key] = max(place, delay) + spacing
        if delay > in_slot_ms:
            delays[subtask.key] = min(delay, max_delay_ms)
    lines: Mapping[str, int] = {key: ms for key, ms in next_place.items() if delays}
    return SubmitPacing(delays_ms=delays, lines_ms=dict(lines))
