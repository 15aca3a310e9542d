"""Reading providers' rate-limit headers (OpenAI and Anthropic) into one shape.

- OpenAI: ``x-ratelimit-{limit,remaining,reset}-{requests,tokens}``; resets are durations until
  the window is full again (``6m0s``, ``1s``, ``250ms``, ``1m30.5s``).
- Anthropic: ``anthropic-ratelimit-{requests,tokens,input-tokens,output-tokens}-{limit,remaining,
  reset}``; resets are RFC 3339 timestamps.
- Both: ``retry-after`` (seconds, or an HTTP date) and ``retry-after-ms``.

Header names are matched case-insensitively; a value that does not parse is ignored.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

__all__ = ["DIMENSIONS", "ProviderWindow", "RateLimitHeaders", "parse_duration", "parse_headers"]

#: The dimensions a provider reports, named as ``Limit``'s fields.
DIMENSIONS: tuple[str, ...] = ("requests", "tokens", "input_tokens", "output_tokens")

_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ms|us|µs|ns|h|m|s)")
_UNIT_S = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}


@dataclass(frozen=True, slots=True)
class ProviderWindow:
    """One dimension as the provider reports it.

    Attributes:
        limit: its limit, if given.
        remaining: what is left, if given.
        reset_after_s: seconds until it is reset (OpenAI), if given.
        reset_at: when it is reset, seconds since the epoch (Anthropic), if given.
    """

    limit: int | None = None
    remaining: int | None = None
    reset_after_s: float | None = None
    reset_at: float | None = None


@dataclass(frozen=True, slots=True)
class RateLimitHeaders:
    """What a response's headers say: per dimension (``DIMENSIONS``), and ``retry-after``."""

    windows: dict[str, ProviderWindow] = field(default_factory=dict)
    retry_after_s: float | None = None


def parse_duration(text: str) -> float | None:
    """Seconds of an OpenAI-style duration (``6m0s``, ``1s``, ``250ms``, ``1m30.5s``, ``1h2m``),
    or of a plain number of seconds; None when it does not parse."""
    text = text.strip()
    if not text:
        return None
    try:
        seconds = float(text)
    except ValueError:
        pos, seconds = 0, 0.0
        for match in _DURATION_PART.finditer(text):
            if match.start() != pos:
                return None
            seconds += float(match.group(1)) * _UNIT_S[match.group(2)]
            pos = match.end()
        if pos != len(text):
            return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def _parse_timestamp(text: str) -> float | None:
    """Seconds since the epoch of an RFC 3339 timestamp (no zone: UTC); None when it does not parse."""
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def _parse_int(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        value = float(text.strip())
    except ValueError:
        return None
    return max(int(value), 0) if math.isfinite(value) else None


def _parse_retry_after(headers: Mapping[str, str]) -> float | None:
    if (ms := headers.get("retry-after-ms")) is not None:
        try:
            value = float(ms) / 1000
        except ValueError:
            pass
        else:
            if math.isfinite(value) and value >= 0:
                return value
    text = headers.get("retry-after")
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        try:
            moment = parsedate_to_datetime(text)
        except (TypeError, ValueError):
            return None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        value = moment.timestamp() - datetime.now(UTC).timestamp()
    return max(value, 0.0) if math.isfinite(value) else None


def parse_headers(headers: Mapping[str, str]) -> RateLimitHeaders:
    """Read OpenAI's and Anthropic's rate-limit headers (either, or both, in any case)."""
    lower = {name.lower(): value for name, value in headers.items()}
    windows: dict[str, ProviderWindow] = {}
    for dim in DIMENSIONS:
        suffix = dim.replace("_", "-")
        limit = _parse_int(lower.get(f"anthropic-ratelimit-{suffix}-limit"))
        remaining = _parse_int(lower.get(f"anthropic-ratelimit-{suffix}-remaining"))
        reset = lower.get(f"anthropic-ratelimit-{suffix}-reset")
        reset_at = _parse_timestamp(reset) if reset is not None else None
        reset_after: float | None = None
        if dim in ("requests", "tokens"):
            limit = limit if limit is not None else _parse_int(lower.get(f"x-ratelimit-limit-{dim}"))
            if remaining is None:
                remaining = _parse_int(lower.get(f"x-ratelimit-remaining-{dim}"))
            duration = lower.get(f"x-ratelimit-reset-{dim}")
            reset_after = parse_duration(duration) if duration is not None else None
        window = ProviderWindow(
            limit=limit, remaining=remaining, reset_after_s=reset_after, reset_at=reset_at
        )
        if window != ProviderWindow():
            windows[dim] = window
    return RateLimitHeaders(windows=windows, retry_after_s=_parse_retry_after(lower))
