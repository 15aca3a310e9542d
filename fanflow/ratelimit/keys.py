"""Every Redis key of the shared rate limits, named in one place.

The keys of one limit key ``K`` share the prefix ``{prefix}:limit:{K}:``; the braces are a Redis
Cluster hash tag, so every script that touches a single limit key touches one slot. An acquire that
spans several limit keys touches several slots: multi-key all-or-none needs a non-cluster Redis (or
a single limit key per branch on a cluster).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["LimitKeys", "limits_index_key"]


@dataclass(frozen=True, slots=True)
class LimitKeys:
    """The keys of one limit key.

    Attributes:
        config: hash — the limit as the scripts read it: ``requests``, ``tokens``, ``input_tokens``,
            ``output_tokens``, ``concurrency`` (absent when not limited) and ``window_ms``.
        requests: sorted set — admission id → admission time (ms of Redis server time): the
            sliding-window log of starts.
        tokens: sorted set — admission id → admission time (ms): the sliding-window log of token
            reservations (only kept when the limit has a token component).
        amounts: hash — admission id → ``"input:output"`` tokens of that entry (reserved, then
            settled).
        totals: hash — ``in`` / ``out``: running sums of ``amounts`` over the window.
        leases: sorted set — admission id → lease expiry (ms): the calls in flight (concurrency).
        cooldown: string — present (with a PX expiry) while the key is cooling down.
        debt: hash — usage the provider reported beyond ours (``observe_headers``): per dimension
            ``<dim>`` → amount and ``<dim>_until`` → when it lapses (ms).
    """

    config: str
    requests: str
    tokens: str
    amounts: str
    totals: str
    leases: str
    cooldown: str
    debt: str

    @classmethod
    def of(cls, prefix: str, key: str) -> LimitKeys:
        """The keys of limit key ``key`` under ``prefix``."""
        base = f"{prefix}:limit:{{{key}}}:"
        return cls(**{name: base + name for name in cls.__slots__})

    def all(self) -> list[str]:
        """Every key of the limit key, in declaration order."""
        return [getattr(self, name) for name in self.__slots__]

    def state(self) -> list[str]:
        """The keys of its live state (everything but the configuration)."""
        return [getattr(self, name) for name in self.__slots__ if name != "config"]


def limits_index_key(prefix: str) -> str:
    """Hash of every configured limit: limit key → ``Limit`` JSON (for listing)."""
    return f"{prefix}:limits"
