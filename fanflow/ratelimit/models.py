"""The shared limits' data: a ``Limit`` (configuration) and what ``Limiter`` answers."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = ["REASONS", "Admission", "Limit", "LimitStatus", "Reason", "Refusal"]

Reason = Literal["requests", "tokens", "input_tokens", "output_tokens", "concurrency", "cooldown"]
#: Why an acquire was refused, by the code the ``acquire`` script returns (1-based).
REASONS: tuple[Reason, ...] = (
    "requests",
    "tokens",
    "input_tokens",
    "output_tokens",
    "concurrency",
    "cooldown",
)

_WHITESPACE = re.compile(r"\s")


class Limit(BaseModel):
    """A global limit on one key (a model, an API key, a service), across every worker.

    Attributes:
        key: any string without whitespace, e.g. ``openai:gpt-4o-mini``, ``anthropic:key-2``.
        requests: most calls started per ``window_s`` (a sliding window).
        tokens: most input + output tokens per ``window_s``.
        input_tokens: most input tokens per ``window_s``.
        output_tokens: most output tokens per ``window_s``.
        concurrency: most calls in flight at once.
        window_s: the window of ``requests`` and the token limits, in seconds.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    key: str = Field(min_length=1, max_length=200)
    requests: int | None = Field(default=None, ge=1)
    tokens: int | None = Field(default=None, ge=1)
    input_tokens: int | None = Field(default=None, ge=1)
    output_tokens: int | None = Field(default=None, ge=1)
    concurrency: int | None = Field(default=None, ge=1)
    window_s: float = Field(default=60.0, ge=0.001, le=7 * 24 * 3600)

    @field_validator("key")
    @classmethod
    def _no_whitespace(cls, value: str) -> str:
        if _WHITESPACE.search(value):
            raise ValueError(f"{value!r} contains whitespace")
        return value

    @model_validator(mode="after")
    def _whole_milliseconds(self) -> Limit:
        if self.window_ms < 1:
            raise ValueError("window_s must be at least 1 ms")
        return self

    @property
    def window_ms(self) -> int:
        """The window in whole milliseconds (what the scripts use)."""
        return round(self.window_s * 1000)

    @property
    def has_tokens(self) -> bool:
        """Whether any token limit is set (token reservations are only logged then)."""
        return any(value is not None for value in (self.tokens, self.input_tokens, self.output_tokens))


@dataclass(frozen=True, slots=True)
class Admission:
    """An admitted call: what ``settle``, ``release`` and ``renew`` need.

    Attributes:
        id: the admission's id in every log and lease.
        keys: the limit keys it holds (configured ones only; unconfigured keys hold nothing).
        input_tokens: input tokens reserved.
        output_tokens: output tokens reserved.
        expires_at: when its lease (concurrency slot) lapses unless renewed, Redis server time (s).
        admitted_at: when it was admitted, Redis server time (s): its place in the request window.
    """

    id: str
    keys: tuple[str, ...]
    input_tokens: int
    output_tokens: int
    expires_at: float
    admitted_at: float = 0.0


@dataclass(frozen=True, slots=True)
class Refusal:
    """A refused acquire: nothing was taken.

    Attributes:
        key: the limit key that refused longest.
        reason: which of its limits refused (``requests``, ``tokens``, ``input_tokens``,
            ``output_tokens``, ``concurrency`` or ``cooldown``).
        wait_s: how long until an acquire could succeed: the earliest time every limit of the
            call admits (jitter added for cool-downs; a hint for concurrency, whose slots free
            whenever a call ends).
    """

    key: str
    reason: Reason
    wait_s: float


@dataclass(frozen=True, slots=True)
class LimitStatus:
    """What a limit key holds now. Window counts include usage the provider reported beyond ours."""

    limit: Limit
    requests_in_window: int
    tokens_in_window: int
    input_tokens_in_window: int
    output_tokens_in_window: int
    in_flight: int
    cooldown_s: float
