"""The branch runner's side of the shared limits (DESIGN §4): admit an attempt, then settle it.

Executors neither know nor call the limiter. Before each attempt the branch runner asks the
``Gate`` to admit it on every limit key the branch consumes (``Subtask.limits``, plus a model's key
once model calls land), reserving its estimated tokens — one round trip, all or none. Refused:

- for a short wait (``wait_in_slot_s``), the branch waits in its thread and asks again;
- for a longer one, before its first attempt, the branch is **deferred**: its message is sent
  again with a countdown (bounded below the broker's visibility timeout) and its worker thread is
  free meanwhile; a deferral never counts as an attempt or a delivery;
- for a longer one on a later attempt (the branch already spent tries), it waits in its slot, in
  steps, still checking for cancellation.

After the attempt the reservation is settled to the real usage (or released when the call
failed). A ``RateLimitedError`` (a provider's 429) cools every key of the branch down for every
worker and the attempt is tried again without being counted. While an attempt runs, the worker's
heartbeat renews its admission's lease, so a concurrency slot of a worker that died is freed when
that lease lapses.
"""

from __future__ import annotations

import math
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from fanflow.ratelimit import Admission, Limiter, Refusal
from fanflow.ratelimit.headers import parse_headers
from fanflow.result import Usage

__all__ = ["CANCELLED", "Cancelled", "Deferral", "Gate"]


class Cancelled:
    """The job was cancelled while the branch waited for admission."""


#: What ``Gate.admit`` returns when the job was cancelled while it waited.
CANCELLED = Cancelled()


@dataclass(frozen=True, slots=True)
class Deferral:
    """The branch could not be admitted soon: send it again after ``countdown_s``."""

    countdown_s: float
    key: str
    reason: str


class Gate:
    """Admits branch attempts on their limit keys; tracks admissions for the heartbeat to renew."""

    def __init__(
        self,
        limiter: Limiter,
        *,
        wait_in_slot_s: float = 2.0,
        max_countdown_s: float = 300.0,
        observe_interval_s: float = 0.25,
    ) -> None:
        self.limiter = limiter
        self.wait_in_slot_s = wait_in_slot_s
        self.max_countdown_s = max_countdown_s
        self._held: dict[str, Admission] = {}
        self._observed: dict[str, float] = {}
        self.observe_interval_s = observe_interval_s
        self._lock = threading.Lock()

    def admit(
        self,
        keys: Sequence[str],
        estimate: Usage,
        *,
        may_defer: bool,
        cancelled: Callable[[], bool],
    ) -> Admission | Deferral | Cancelled | None:
        """Admit one attempt on ``keys``: its admission, or None when there is nothing to admit.

        A refusal is not an error: a ``Deferral`` (when ``may_defer`` and the wait is long), else a
        wait in the slot; ``CANCELLED`` when the job was cancelled meanwhile.
        """
        if not keys:
            return None
        while True:
            verdict = self.limiter.acquire(
                keys, input_tokens=estimate.input_tokens, output_tokens=estimate.output_tokens
            )
            if isinstance(verdict, Admission):
                with self._lock:
                    self._held[verdict.id] = verdict
                return verdict
            assert isinstance(verdict, Refusal)
            if may_defer and verdict.wait_s > self.wait_in_slot_s:
                countdown = min(verdict.wait_s, self.max_countdown_s)
                return Deferral(countdown_s=countdown * (1 + random.random() * 0.1), key=verdict.key,
                                reason=verdict.reason)  # fmt: skip
            time.sleep(min(max(verdict.wait_s, 0.01), self.wait_in_slot_s))
            if cancelled():
                return CANCELLED

    def settle(self, admission: Admission | None, usage: Usage) -> None:
        """The attempt ran: count its real usage instead of the estimate; free its slot."""
        if admission is None:
            return
        self._forget(admission)
        self.limiter.settle(admission, input_tokens=usage.input_tokens, output_tokens=usage.output_tokens)

    def release(self, admission: Admission | None) -> None:
        """The attempt failed before spending: give back its reservation and its slot."""
        if admission is None:
            return
        self._forget(admission)
        self.limiter.release(admission)

    def cool_down(self, keys: Sequence[str], seconds: float) -> None:
        """A provider said 429: every worker waits ``seconds`` on each of ``keys``."""
        for key in keys:
            self.limiter.cooldown(key, seconds)

    def observe(self, key: str, headers: Mapping[str, str]) -> None:
        """Feed a response's rate-limit headers to the shared state of ``key``.

        Headers that say stop (a ``retry-after``, a dimension with little left) are passed on at
        once; routine ones at most every ``observe_interval_s`` per key and process, so a worker
        with hundreds of calls in flight does not add a Redis round trip to each of them.
        """
        parsed = parse_headers(headers)
        if not parsed.windows and parsed.retry_after_s is None:
            return
        urgent = parsed.retry_after_s is not None or any(
            w.remaining is not None and (w.remaining == 0 or (w.limit and w.remaining <= w.limit * 0.1))
            for w in parsed.windows.values()
        )
        now = time.monotonic()
        with self._lock:
            if not urgent and now - self._observed.get(key, -math.inf) < self.observe_interval_s:
                return
            self._observed[key] = now
        self.limiter.observe_headers(key, headers)

    def renew(self) -> None:
        """Extend the leases of the admissions held now (called by the worker's heartbeat)."""
        with self._lock:
            held = list(self._held.values())
        if held:
            self.limiter.renew(held)

    def _forget(self, admission: Admission) -> None:
        with self._lock:
            self._held.pop(admission.id, None)
