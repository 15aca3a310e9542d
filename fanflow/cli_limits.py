"""``fanflow limits``: set, show, reset and delete the shared limits (registered on ``fanflow``'s group)."""

from __future__ import annotations

from collections.abc import Callable

import click
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from fanflow.errors import FanflowError, SpecError
from fanflow.ratelimit import Limit, Limiter

__all__ = ["limits", "register"]

console = Console(stderr=True)
stdout = Console(highlight=False, soft_wrap=True)

#: Gives the limiter of the configured broker (set by ``register``).
_source: Callable[[], Limiter] | None = None


def register(group: click.Group, limiter: Callable[[], Limiter]) -> None:
    """Add the ``limits`` commands to ``group``; ``limiter`` gives the limiter they act on."""
    global _source
    _source = limiter
    group.add_command(limits)


_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def _window_seconds(value: str) -> float:
    """``1s``, ``1m``, ``1h``, ``500ms`` or plain seconds, as seconds."""
    text = value.strip().lower()
    for unit in ("ms", "s", "m", "h"):
        number = text.removesuffix(unit)
        if number != text:
            break
    else:
        number, unit = text, "s"
    try:
        seconds = float(number or "1") * _UNITS[unit]
    except ValueError:
        message = f"{value!r}: expected e.g. 1s, 1m, 1h or seconds"
        raise click.BadParameter(message, param_hint="--per") from None
    if seconds <= 0:
        raise click.BadParameter(f"{value!r}: the window must be longer than 0", param_hint="--per")
    return seconds


def _limiter() -> Limiter:
    if _source is None:  # pragma: no cover - register() is called when fanflow.cli is imported
        raise click.ClickException("the limits commands are not registered on a command line")
    return _source()


@click.group()
def limits() -> None:
    """Shared limits (requests, tokens, concurrency) that hold across every worker.

    \b
    Examples:
      fanflow limits set openai:gpt-4o-mini --requests 500 --per 1m --tokens 200000 --concurrency 50
      fanflow limits show
      fanflow limits reset openai:gpt-4o-mini
    """


@limits.command("set")
@click.argument("key")
@click.option("--requests", type=int, help="Requests per window.")
@click.option("--tokens", type=int, help="Tokens (input + output) per window.")
@click.option("--input-tokens", type=int, help="Input tokens per window.")
@click.option("--output-tokens", type=int, help="Output tokens per window.")
@click.option("--per", "per", default="1m", show_default=True, help="The window: 1s, 1m, 1h or seconds.")
@click.option("--concurrency", type=int, help="Calls in flight at once.")
def limits_set(
    key: str,
    requests: int | None,
    tokens: int | None,
    input_tokens: int | None,
    output_tokens: int | None,
    per: str,
    concurrency: int | None,
) -> None:
    """Set (replace) the limit of KEY, e.g. a provider and model: openai:gpt-4o-mini."""
    values = {"requests": requests, "tokens": tokens, "input_tokens": input_tokens,
              "output_tokens": output_tokens, "concurrency": concurrency}  # fmt: skip
    if all(value is None for value in values.values()):
        raise SpecError(
            "give at least one of --requests, --tokens, --input-tokens, --output-tokens, --concurrency"
        )
    try:
        limit = Limit(key=key, window_s=_window_seconds(per), **values)
    except ValidationError as exc:
        error = exc.errors(include_url=False)[0]
        where = ".".join(str(part) for part in error["loc"])
        raise SpecError(f"{where}: {error['msg']}") from None
    _limiter().set_limit(limit)
    console.print(f"{key}: {_describe(limit)}", markup=False)


def _describe(limit: Limit) -> str:
    window = f"{limit.window_s:g}s"
    parts = [
        f"{value} {name.replace('_', ' ')}/{window}"
        for name, value in (("requests", limit.requests), ("tokens", limit.tokens),
                            ("input_tokens", limit.input_tokens), ("output_tokens", limit.output_tokens))
        if value is not None
    ]  # fmt: skip
    if limit.concurrency is not None:
        parts.append(f"{limit.concurrency} at once")
    return ", ".join(parts)


@limits.command("show")
@click.argument("key", required=False)
def limits_show(key: str | None) -> None:
    """Show every limit (or KEY's): the limit, its use in the current window, calls in flight, cool-down."""
    limiter = _limiter()
    keys = [key] if key else [limit.key for limit in limiter.limits()]
    table = Table(title_justify="left")
    table.add_column("key", no_wrap=True)
    for column in ("limit", "requests", "tokens", "in flight", "cool-down"):
        table.add_column(column)
    for name in keys:
        status = limiter.status(name)
        if status is None:
            raise FanflowError(f"no limit is set for {name!r} (`fanflow limits set {name} ...`)")
        tokens = status.tokens_in_window or status.input_tokens_in_window + status.output_tokens_in_window
        cooldown = f"{status.cooldown_s:.1f}s" if status.cooldown_s > 0 else ""
        table.add_row(name, _describe(status.limit), str(status.requests_in_window), str(tokens),
                      str(status.in_flight), cooldown)  # fmt: skip
    if not keys:
        console.print("no limits set (`fanflow limits set KEY --requests N --per 1m ...`)", markup=False)
        return
    stdout.print(table)


@limits.command("reset")
@click.argument("key")
def limits_reset(key: str) -> None:
    """Forget KEY's current window, leases and cool-down (its limit stays)."""
    _limiter().reset(key)
    console.print(f"{key}: reset", markup=False)


@limits.command("delete")
@click.argument("key")
def limits_delete(key: str) -> None:
    """Remove KEY's limit: branches that name it are no longer limited by it."""
    removed = _limiter().delete_limit(key)
    console.print(f"{key}: {'deleted' if removed else 'had no limit'}", markup=False)
