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
from typing import Protocol

from fanflow.ratelimit import Admission, Limit, Limiter, Refusal
from fanflow.ratelimit.headers import parse_headers
from fanflow.ratelimit.limiter import WINDOW_GUARD_MS
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


class Pacer(Protocol):
    """Keeps each job's place in line on busy limit keys (the job store: ``pace.lua``)."""

    def pace(
        self, job_id: str, key: str, *, refused_wait_s: float | None, spacings: dict[str, int]
    ) -> float | None:
        """Seconds until the branch's place in its job's line (None: no line, go now)."""


#: How long a process trusts its copy of a key's limit and cool-down before reading them again: a
#: limit set (or a cool-down another worker started) on a key nothing limited is seen within this.
LIMIT_CACHE_S = 1.0


class Gate:
    """Admits branch attempts on their limit keys; tracks admissions for the heartbeat to renew.

    Fairness between jobs on a busy key: every job has its own line on each key (``Pacer``). A
    branch the limits refuse takes its job's next place (one place per ``window / requests``), and a
    job's later branches wait for their places instead of crowding the key — so a 10-branch job
    submitted behind a 5,000-branch one gets about half the key at once, not what is left after the
    big one drains.
    """

    def __init__(
        self,
        limiter: Limiter,
        *,
        wait_in_slot_s: float = 2.0,
        max_countdown_s: float = 300.0,
        observe_interval_s: float = 0.25,
        pacer: Pacer | None = None,
    ) -> None:
        self.limiter = limiter
        self.wait_in_slot_s = wait_in_slot_s
        self.max_countdown_s = max_countdown_s
        self._held: dict[str, Admission] = {}
        self._observed: dict[str, float] = {}
        self.observe_interval_s = observe_interval_s
        self.pacer = pacer
        #: key -> (when read, its limit, until when it cools down): monotonic seconds
        self._limits: dict[str, tuple[float, Limit | None, float]] = {}
        #: One reader per key refreshes the cache; the other threads keep using what it held.
        self._reading: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()

    def admit(
        self,
        keys: Sequence[str],
        estimate: Usage,
        *,
        may_defer: bool,
        cancelled: Callable[[], bool],
        job_id: str | None = None,
        branch_key: str = "",
    ) -> Admission | Deferral | Cancelled | None:
        """Admit one attempt on ``keys``: its admission, or None when there is nothing to admit.

        A refusal is not an error: a ``Deferral`` (when ``may_defer`` and the wait is long), else a
        wait in the slot; ``CANCELLED`` when the job was cancelled meanwhile. With ``job_id`` the
        wait is the branch's place in its job's line on the key (see the class).
        """
        keys = [key for key in keys if self._in_force(key)]
        if not keys:
            return None  # nothing limits these keys and none cools down: no round trip
        while True:
            verdict = self.limiter.acquire(
                keys, input_tokens=estimate.input_tokens, output_tokens=estimate.output_tokens
            )
            if isinstance(verdict, Admission):
                with self._lock:
                    self._held[verdict.id] = verdict
                return verdict
            assert isinstance(verdict, Refusal)
            wait = verdict.wait_s
            spacings = self.spacings(keys, estimate) if job_id is not None else {}
            if spacings and self.pacer is not None and job_id is not None:
                wait = self.pacer.pace(job_id, branch_key, refused_wait_s=wait, spacings=spacings) or wait
            # Only the head of its job's line waits in its thread; the others free it (a thread
            # waiting for a place far down one job's line is a thread another job cannot use).
            behind = bool(spacings) and wait > verdict.wait_s + 2 * max(spacings.values()) / 1000
            if may_defer and (wait > self.wait_in_slot_s or behind):
                countdown = min(wait, self.max_countdown_s)
                jitter = 1 + random.random() * (0.01 if spacings else 0.1)
                return Deferral(countdown_s=countdown * jitter, key=verdict.key, reason=verdict.reason)
            time.sleep(min(max(wait, 0.01), self.wait_in_slot_s))
            if cancelled():
                return CANCELLED

    def place_in_line(
        self, job_id: str, branch_key: str, keys: Sequence[str], estimate: Usage
    ) -> Deferral | None:
        """A branch's first try: wait for its place when its job already has a line on a busy key."""
        if self.pacer is None or not keys:
            return None
        spacings = self.spacings(keys, estimate)
        if not spacings:
            return None
        wait = self.pacer.pace(job_id, branch_key, refused_wait_s=None, spacings=spacings)
        if wait is None:
            return None
        if wait <= min(self.wait_in_slot_s, 2 * max(spacings.values()) / 1000):
            time.sleep(wait)  # the head of its job's line
            return None
        return Deferral(countdown_s=min(wait, self.max_countdown_s), key=keys[0], reason="pacing")

    def spacings(self, keys: Sequence[str], estimate: Usage) -> dict[str, int]:
        """One place in line per this many ms on each key with a request rate (``window /
        requests``). Keys limited only in tokens or concurrency have no line: a token estimate
        (prompt + ``max_tokens``) is far above what a call really spends, so pacing by it would
        space calls out for nothing; those keys are shared through their refusals alone."""
        spacings: dict[str, int] = {}
        for key in keys:
            limit = self._limit(key)
            if limit is None or not limit.requests:
                continue
            window_ms = limit.window_ms + min(WINDOW_GUARD_MS, limit.window_ms // 20)
            spacing = window_ms / limit.requests * 1.02
            if spacing >= 1:
                spacings[key] = round(spacing)
        return spacings

    def any_limited(self, keys: Sequence[str]) -> bool:
        """Whether any of ``keys`` has a limit (as this process last read it, at most
        ``LIMIT_CACHE_S`` ago)."""
        return any(self._limit(key) is not None for key in keys)

    def _limit(self, key: str) -> Limit | None:
        return self._glance(key)[1]

    def _in_force(self, key: str) -> bool:
        """The key has a limit, or cools down: an attempt must be admitted on it."""
        _, limit, cooling_until = self._glance(key)
        return limit is not None or cooling_until > time.monotonic()

    def _glance(self, key: str) -> tuple[float, Limit | None, float]:
        now = time.monotonic()
        cached = self._limits.get(key)
        if cached is not None and now - cached[0] < LIMIT_CACHE_S:
            return cached
        # Hundreds of threads find the entry stale at once: one reads Redis, the others go on with
        # the entry they have (or, the very first time, wait for the reader's).
        reading = self._reading.get(key) or self._reading.setdefault(key, threading.Lock())
        if not reading.acquire(blocking=cached is None):
            return cached  # type: ignore[return-value]  # not None: blocking when it is
        try:
            cached = self._limits.get(key)
            if cached is not None and time.monotonic() - cached[0] < LIMIT_CACHE_S:
                return cached
            limit, cooldown_s = self.limiter.glance(key)
            now = time.monotonic()
            fresh = (now, limit, now + cooldown_s if cooldown_s else 0.0)
            self._limits[key] = fresh
            return fresh
        finally:
            reading.release()

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
            read_at, limit, _ = self._glance(key)
            self._limits[key] = (read_at, limit, time.monotonic() + seconds)

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
