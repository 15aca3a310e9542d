"""``Limiter``: global limits held in Redis, admitted atomically by Lua scripts (see the package)."""

from __future__ import annotations

import math
import os
import random
from collections.abc import Mapping, Sequence
from importlib import resources
from typing import Any

import redis
from redis.typing import EncodableT, FieldT

from fanflow.ratelimit.headers import DIMENSIONS, parse_headers
from fanflow.ratelimit.keys import LimitKeys, limits_index_key
from fanflow.ratelimit.models import REASONS, Admission, Limit, LimitStatus, Refusal

__all__ = ["COOLDOWN_JITTER", "COOLDOWN_JITTER_MAX_S", "Limiter"]

#: A refusal during a cool-down waits up to this fraction longer (spreads the herd) ...
COOLDOWN_JITTER = 0.25
#: ... but at most this many seconds longer.
COOLDOWN_JITTER_MAX_S = 3.0
#: Most token-log entries a refused acquire reads to tell its wait time (beyond: a lower bound).
REFUSAL_SCAN_CAP = 2000
_CONFIG_FIELDS = ("requests", "tokens", "input_tokens", "output_tokens", "concurrency")


def _script(name: str) -> str:
    return resources.files("fanflow.ratelimit.lua").joinpath(f"{name}.lua").read_text(encoding="utf-8")


def _ms(seconds: float) -> int:
    return max(math.ceil(seconds * 1000), 0)


#: How much longer than declared a window is enforced (at most 5% of it): see ``set_limit``.
WINDOW_GUARD_MS = 25


class Limiter:
    """Global limits across every worker, in one Redis. Thread-safe.

    Args:
        client: the Redis (non-cluster when one call acquires several limit keys).
        prefix: the key prefix (``fanflow`` by default, as the job store).
        lease_s: how long an admission's concurrency slot lives unless renewed.
        concurrency_wait_s: the wait a concurrency refusal suggests (a slot frees whenever a call
            ends, which no clock predicts), unless the oldest lease lapses sooner.
    """

    def __init__(
        self,
        client: redis.Redis,
        *,
        prefix: str = "fanflow",
        lease_s: float = 60.0,
        concurrency_wait_s: float = 0.25,
    ) -> None:
        if lease_s <= 0:
            raise ValueError("lease_s must be positive")
        self.client = client
        self.prefix = prefix
        self.lease_s = lease_s
        self.concurrency_wait_s = concurrency_wait_s
        self._acquire = client.register_script(_script("acquire"))
        self._settle = client.register_script(_script("settle"))
        self._renew = client.register_script(_script("renew"))
        self._cooldown = client.register_script(_script("cooldown"))
        self._observe = client.register_script(_script("observe"))
        self._status = client.register_script(_script("status"))

    def keys(self, key: str) -> LimitKeys:
        """The Redis keys of limit key ``key``."""
        return LimitKeys.of(self.prefix, key)

    # -- configuration -------------------------------------------------------------------------

    def set_limit(self, limit: Limit) -> None:
        """Configure (or reconfigure) a limit; every worker's next acquire applies it."""
        keys = self.keys(limit.key)
        # Calls start a few milliseconds after their admission: the window is held a little longer
        # than declared, so the calls themselves (not only the admissions) never exceed the limit
        # in any window of window_s.
        enforced = limit.window_ms + min(WINDOW_GUARD_MS, limit.window_ms // 20)
        mapping: dict[FieldT, EncodableT] = {"window_ms": str(enforced)}
        for name in _CONFIG_FIELDS:
            value = getattr(limit, name)
            if value is not None:
                mapping[name] = str(value)
        pipe = self.client.pipeline(transaction=True)
        pipe.delete(keys.config)
        pipe.hset(keys.config, mapping=mapping)
        pipe.hset(limits_index_key(self.prefix), limit.key, limit.model_dump_json(exclude_none=True))
        pipe.execute()

    def get_limit(self, key: str) -> Limit | None:
        """The limit configured on ``key``, if any."""
        raw = self.client.hget(limits_index_key(self.prefix), key)
        return None if raw is None else Limit.model_validate_json(raw)

    def glance(self, key: str) -> tuple[Limit | None, float]:
        """``key``'s limit (None: none) and how long it still cools down (0: it does not), in one
        round trip: what a worker caches briefly to skip the acquire of keys nothing limits."""
        pipe = self.client.pipeline(transaction=False)
        pipe.hget(limits_index_key(self.prefix), key)
        pipe.pttl(self.keys(key).cooldown)
        raw, pttl = pipe.execute()
        limit = None if raw is None else Limit.model_validate_json(raw)
        return limit, max(0, int(pttl)) / 1000

    def limits(self) -> list[Limit]:
        """Every configured limit, by key."""
        raw: dict[Any, Any] = self.client.hgetall(limits_index_key(self.prefix))
        return sorted((Limit.model_validate_json(value) for value in raw.values()), key=lambda lim: lim.key)

    def delete_limit(self, key: str) -> bool:
        """Remove a limit and its state; False when it was not configured."""
        pipe = self.client.pipeline(transaction=True)
        pipe.hdel(limits_index_key(self.prefix), key)
        pipe.delete(*self.keys(key).all())
        removed, _ = pipe.execute()
        return bool(removed)

    def reset(self, key: str) -> None:
        """Forget the window, leases, cool-down and provider debt of ``key`` (not its limit)."""
        self.client.delete(*self.keys(key).state())

    def status(self, key: str) -> LimitStatus | None:
        """What ``key`` holds now, or None when it has no limit."""
        limit = self.get_limit(key)
        if limit is None:
            return None
        raw = self._status(keys=self.keys(key).all())
        if not raw:
            return None
        requests, tokens_in, tokens_out, in_flight, cooldown_ms, *debt = (int(value) for value in raw)
        return LimitStatus(
            limit=limit,
            requests_in_window=requests + debt[0],
            tokens_in_window=tokens_in + tokens_out + debt[1],
            input_tokens_in_window=tokens_in + debt[2],
            output_tokens_in_window=tokens_out + debt[3],
            in_flight=in_flight,
            cooldown_s=cooldown_ms / 1000,
        )

    # -- the hot path --------------------------------------------------------------------------

    def acquire(
        self, keys: Sequence[str], *, input_tokens: int = 0, output_tokens: int = 0
    ) -> Admission | Refusal:
        """Admit one call on every limit of ``keys`` (one round trip, all or none), reserving its
        estimated tokens; or a ``Refusal`` with how long to wait. Keys without a limit admit
        (unless cooling down); duplicates count once."""
        if input_tokens < 0 or output_tokens < 0:
            raise ValueError("token estimates must not be negative")
        unique = tuple(dict.fromkeys(keys))
        admission_id = os.urandom(9).hex()
        if not unique:
            return Admission(admission_id, (), input_tokens, output_tokens, math.inf)
        redis_keys: list[str] = []
        for key in unique:
            redis_keys.extend(self.keys(key).all())
        args = (admission_id, _ms(self.lease_s), input_tokens, output_tokens,
                _ms(self.concurrency_wait_s), REFUSAL_SCAN_CAP)  # fmt: skip
        raw = self._acquire(keys=redis_keys, args=args)
        if int(raw[0]) == 1:
            held = tuple(unique[int(index) - 1] for index in raw[3:])
            return Admission(admission_id, held, input_tokens, output_tokens,
                             int(raw[1]) / 1000, int(raw[2]) / 1000)  # fmt: skip
        reason = REASONS[int(raw[2]) - 1]
        wait_s = int(raw[3]) / 1000
        if reason == "cooldown":
            wait_s += random.uniform(0, min(wait_s * COOLDOWN_JITTER, COOLDOWN_JITTER_MAX_S))
        return Refusal(key=unique[int(raw[1]) - 1], reason=reason, wait_s=wait_s)

    def _finish(self, admission: Admission, mode: str, input_tokens: int, output_tokens: int) -> None:
        if not admission.keys:
            return
        redis_keys: list[str] = []
        for key in admission.keys:
            keys = self.keys(key)
            redis_keys.extend((keys.tokens, keys.amounts, keys.totals, keys.leases))
        self._settle(keys=redis_keys, args=(admission.id, mode, input_tokens, output_tokens))

    def settle(self, admission: Admission, *, input_tokens: int, output_tokens: int) -> None:
        """The call ended: correct its token reservation to the real usage (returning or adding the
        difference in the window) and free its concurrency slot."""
        if input_tokens < 0 or output_tokens < 0:
            raise ValueError("token usage must not be negative")
        self._finish(admission, "settle", input_tokens, output_tokens)

    def release(self, admission: Admission) -> None:
        """The call failed: give its token reservation back and free its concurrency slot. Its
        request stays counted in the window (it was started)."""
        self._finish(admission, "release", 0, 0)

    def renew(self, admissions: Sequence[Admission]) -> None:
        """Extend the leases of calls still in flight by ``lease_s`` from now (one round trip)."""
        redis_keys: list[str] = []
        ids: list[str] = []
        for admission in admissions:
            for key in admission.keys:
                redis_keys.append(self.keys(key).leases)
                ids.append(admission.id)
        if redis_keys:
            self._renew(keys=redis_keys, args=[_ms(self.lease_s), *ids])

    def cooldown(self, key: str, seconds: float) -> None:
        """Refuse every acquire on ``key``, by every worker, for ``seconds`` (a provider's 429 or
        ``Retry-After``). Works on keys without a limit too; never shortens a cool-down."""
        if seconds > 0:
            self._cooldown(keys=[self.keys(key).cooldown], args=[_ms(seconds)])

    def observe_headers(self, key: str, headers: Mapping[str, str]) -> None:
        """Correct ``key``'s shared state with a response's rate-limit headers.

        - ``retry-after`` / ``retry-after-ms``: a cool-down that long.
        - A dimension (requests, tokens, input / output tokens) with ``remaining`` 0 and a reset
          ahead: a cool-down until the reset.
        - A dimension this key limits, with ``remaining`` below our own headroom (limit minus our
          usage in the window): the difference counts as used, by every acquire, until the reset
          (or one window when no reset is given). It replaces the previous such correction, and
          ``remaining`` at or above our headroom clears it: the provider only ever tightens our
          own accounting, never loosens it. Anthropic's absolute resets are compared with Redis
          server time; OpenAI's durations count from the moment the headers are observed.
        """
        parsed = parse_headers(headers)
        args: list[int] = [_ms(parsed.retry_after_s) if parsed.retry_after_s else -1]
        for dim in DIMENSIONS:
            window = parsed.windows.get(dim)
            if window is None or window.remaining is None:
                args.extend((-1, -1, -1))
                continue
            args.append(window.remaining)
            args.append(_ms(window.reset_after_s) if window.reset_after_s is not None else -1)
            args.append(round(window.reset_at * 1000) if window.reset_at is not None else -1)
        if all(value == -1 for value in args):
            return
        self._observe(keys=self.keys(key).all(), args=args)
