"""What a call cost: list prices in USD per million tokens, overridable from the settings.

Token accounting follows what the providers bill, counted once: ``input_tokens`` is every prompt
token, *including* the ones read from a prompt cache (``cached_tokens``) and the ones written to it
(``cache_write_tokens``, Anthropic only). Each part is priced at its own rate.

A model id is priced by the longest entry of the table that is a prefix of it, when what follows
that prefix is nothing, a date (``-2024-07-18``, ``-20250929``, ``@20250929``, with anything after
it) or ``-latest``. So ``gpt-4o-mini-2024-07-18`` is priced as ``gpt-4o-mini``, while
``gpt-4o-mini`` never takes the ``gpt-4o`` row, and an unlisted ``gpt-5-nano`` is unknown rather
than priced as ``gpt-5``.
"""

from __future__ import annotations

import logging
import re
import threading

from fanflow.errors import ConfigError
from fanflow.executors.llm.providers import (
    Price,
    config_generation,
    price_overrides,
    provider,
    split_model_id,
)
from fanflow.result import Usage

__all__ = ["BUILTIN_PRICES", "cost_usd", "count", "price_of", "priced_usage"]

logger = logging.getLogger("fanflow")


def _p(input: float, output: float, cached: float | None = None) -> Price:
    return Price(input=input, output=output, cached_input=cached)


#: List prices, USD per million tokens. Anthropic rows leave the cache prices to the defaults
#: (reads 0.1 x input, writes 1.25 x input).
BUILTIN_PRICES: dict[str, Price] = {
    "openai:gpt-4o": _p(2.50, 10.00, 1.25),
    "openai:gpt-4o-mini": _p(0.15, 0.60, 0.075),
    "openai:gpt-4.1": _p(2.00, 8.00, 0.50),
    "openai:gpt-4.1-mini": _p(0.40, 1.60, 0.10),
    "openai:gpt-4.1-nano": _p(0.10, 0.40, 0.025),
    "openai:o3": _p(2.00, 8.00, 0.50),
    "openai:o3-mini": _p(1.10, 4.40, 0.55),
    "openai:o4-mini": _p(1.10, 4.40, 0.275),
    "openai:gpt-5": _p(1.25, 10.00, 0.125),
    "openai:gpt-5-mini": _p(0.25, 2.00, 0.025),
    "openai:gpt-5-nano": _p(0.05, 0.40, 0.005),
    "anthropic:claude-opus-4-5": _p(5.00, 25.00),
    "anthropic:claude-opus-4-1": _p(15.00, 75.00),
    "anthropic:claude-opus-4": _p(15.00, 75.00),
    "anthropic:claude-sonnet-4-5": _p(3.00, 15.00),
    "anthropic:claude-sonnet-4": _p(3.00, 15.00),
    "anthropic:claude-3-7-sonnet": _p(3.00, 15.00),
    "anthropic:claude-3-5-haiku": _p(0.80, 4.00),
    "anthropic:claude-haiku-4-5": _p(1.00, 5.00),
}

#: Default multiplier of ``input`` for cache reads / writes when a price does not give them.
_CACHED_FACTOR = {"openai": 0.5, "anthropic": 0.1}
_CACHE_WRITE_FACTOR = 1.25

_VARIANT_SUFFIX = re.compile(r"(?:[-@]\d{4}-?\d{2}-?\d{2}|-latest$)")

_FREE = Price(input=0.0, output=0.0, cached_input=0.0, cache_write=0.0)

_lock = threading.Lock()
# model id -> (price or None when unknown, api); valid for one configuration generation
_resolved: dict[str, tuple[Price | None, str]] = {}
_resolved_generation = -1
_warned: set[str] = set()


def _longest_prefix(model_id: str, table: dict[str, Price]) -> Price | None:
    exact = table.get(model_id)
    if exact is not None:
        return exact
    best: str | None = None
    for key in table:
        if (
            model_id.startswith(key)
            and (best is None or len(key) > len(best))
            and _VARIANT_SUFFIX.match(model_id, len(key))
        ):
            best = key
    return table[best] if best is not None else None


def _resolve(model_id: str) -> tuple[Price | None, str]:
    """(price, api) of a model id; price None when nothing prices it."""
    global _resolved_generation
    generation = config_generation()
    if generation != _resolved_generation:
        with _lock:
            _resolved.clear()
            _resolved_generation = generation
    hit = _resolved.get(model_id)
    if hit is not None:
        return hit
    try:
        name, _ = split_model_id(model_id)
        spec = provider(name)
        api, free = spec.api, spec.free
    except ConfigError:
        api, free = "openai", False
    price = _longest_prefix(model_id, price_overrides())
    if price is None and free:
        price = _FREE
    if price is None:
        price = _longest_prefix(model_id, BUILTIN_PRICES)
    resolved = (price, api)
    with _lock:
        if _resolved_generation == generation:
            _resolved[model_id] = resolved
    return resolved


def price_of(model_id: str) -> Price | None:
    """The price that applies to ``model_id`` (overrides, then free providers, then the table)."""
    return _resolve(model_id)[0]


def cost_usd(
    model_id: str,
    *,
    input_tokens: int,
    cached_tokens: int = 0,
    cache_write_tokens: int = 0,
    output_tokens: int,
    warn: bool = True,
) -> float:
    """USD cost of one call.

    Args:
        model_id: ``provider:model``.
        input_tokens: every prompt token, cached reads and cache writes included.
        cached_tokens: the part of ``input_tokens`` read from a prompt cache.
        cache_write_tokens: the part of ``input_tokens`` written to a prompt cache.
        output_tokens: completion tokens (reasoning included).
        warn: log the "no price known" warning (once per model id) for an unpriced model.

    Returns:
        The cost, or 0.0 for a model nothing prices (logged once per model id as a warning).
    """
    price, api = _resolve(model_id)
    if price is None:
        if warn and model_id not in _warned:
            _warned.add(model_id)
            logger.warning(
                "no price known for model %s: its calls count as $0 (set its price in FANFLOW_PRICES)",
                model_id,
            )
        return 0.0
    cached_rate = price.cached_input
    if cached_rate is None:
        cached_rate = price.input * _CACHED_FACTOR.get(api, 0.5)
    write_rate = price.cache_write if price.cache_write is not None else price.input * _CACHE_WRITE_FACTOR
    cached = max(cached_tokens, 0)
    written = max(cache_write_tokens, 0)
    uncached = max(input_tokens - cached - written, 0)
    total = (
        uncached * price.input + cached * cached_rate + written * write_rate + output_tokens * price.output
    )
    return round(total / 1_000_000, 10)


def count(value: object) -> int:
    """A token count from a provider's JSON: an int (not a bool), else 0."""
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def priced_usage(
    model_id: str, *, input_tokens: int, cached_tokens: int, cache_write_tokens: int, output_tokens: int
) -> Usage:
    """One call's ``Usage``, priced (``input_tokens`` includes the cached reads and writes)."""
    return Usage(
        input_tokens=input_tokens, output_tokens=output_tokens, cached_tokens=cached_tokens,
        cost_usd=cost_usd(model_id, input_tokens=input_tokens, cached_tokens=cached_tokens,
                          cache_write_tokens=cache_write_tokens, output_tokens=output_tokens),
        calls=1,
    )  # fmt: skip
