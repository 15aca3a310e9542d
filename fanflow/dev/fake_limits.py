"""Per-minute rate limits of the fake model server, and their headers in each provider's format.

Each dimension (``requests``, ``tokens``) is a bucket of ``limit`` refilled continuously over a
minute, as the providers describe theirs: after one request of a 500 / minute limit the
requests reset is ``120ms`` (OpenAI) or that instant as an RFC 3339 timestamp (Anthropic).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Literal

__all__ = ["DIMENSIONS", "RateLimits", "format_duration"]

DIMENSIONS = ("requests", "tokens")
_WINDOW_S = 60.0


def format_duration(seconds: float) -> str:
    """An OpenAI-style duration: ``0s``, ``120ms``, ``1s``, ``1m30.5s``, ``6m0s``, ``1h2m3s``."""
    if seconds <= 0:
        return "0s"
    if seconds < 1:
        return f"{max(1, round(seconds * 1000))}ms"
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    text = f"{secs:.3f}".rstrip("0").rstrip(".") + "s"
    if hours:
        return f"{int(hours)}h{int(minutes)}m{text}"
    return f"{int(minutes)}m{text}" if minutes else text


def _rfc3339(epoch_s: float) -> str:
    moment = datetime.fromtimestamp(math.ceil(epoch_s), UTC)
    return moment.isoformat().replace("+00:00", "Z")


class _Bucket:
    def __init__(self, limit: int, now: float) -> None:
        self.limit = limit
        self.level = float(limit)
        self.at = now

    def refill(self, now: float) -> None:
        self.level = min(float(self.limit), self.level + (now - self.at) * self.limit / _WINDOW_S)
        self.at = now

    def wait_for(self, amount: float) -> float:
        missing = min(amount, self.limit) - self.level
        return max(missing, 0.0) * _WINDOW_S / self.limit

    def reset_after(self) -> float:
        return (self.limit - self.level) * _WINDOW_S / self.limit


class RateLimits:
    """Buckets per dimension; not thread-safe (the server uses it from its own loop, under a lock).

    Args:
        limits: per-minute limits, e.g. ``{"requests": 500, "tokens": 200000}``.
    """

    def __init__(self, limits: Mapping[str, int]) -> None:
        unknown = set(limits) - set(DIMENSIONS)
        if unknown:
            raise ValueError(f"unknown rate-limit dimensions {sorted(unknown)}; known: {list(DIMENSIONS)}")
        if any(value < 1 for value in limits.values()):
            raise ValueError("rate limits must be positive")
        self._limits = dict(limits)
        self.reset()

    def reset(self) -> None:
        """Every bucket full again."""
        now = time.monotonic()
        self._buckets = {name: _Bucket(limit, now) for name, limit in self._limits.items()}

    def _refilled(self) -> dict[str, _Bucket]:
        now = time.monotonic()
        for bucket in self._buckets.values():
            bucket.refill(now)
        return self._buckets

    def wait_s(self, tokens: int) -> float:
        """Seconds until one request of ``tokens`` fits in every bucket (0: it fits now)."""
        need = {"requests": 1, "tokens": tokens}
        return max((b.wait_for(need[name]) for name, b in self._refilled().items()), default=0.0)

    def charge(self, tokens: int) -> None:
        """Count one request of ``tokens`` (buckets may go below zero; remaining shows 0)."""
        used = {"requests": 1, "tokens": tokens}
        for name, bucket in self._refilled().items():
            bucket.level -= used[name]

    def headers(self, api: Literal["openai", "anthropic"]) -> dict[str, str]:
        """The provider's rate-limit headers for the buckets as they are now."""
        out: dict[str, str] = {}
        wall = time.time()
        for name, bucket in self._refilled().items():
            remaining = str(max(0, math.floor(bucket.level)))
            if api == "openai":
                out[f"x-ratelimit-limit-{name}"] = str(bucket.limit)
                out[f"x-ratelimit-remaining-{name}"] = remaining
                out[f"x-ratelimit-reset-{name}"] = format_duration(bucket.reset_after())
            else:
                out[f"anthropic-ratelimit-{name}-limit"] = str(bucket.limit)
                out[f"anthropic-ratelimit-{name}-remaining"] = remaining
                out[f"anthropic-ratelimit-{name}-reset"] = _rfc3339(wall + bucket.reset_after())
        return out
