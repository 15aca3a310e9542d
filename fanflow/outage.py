"""Riding out a short Redis outage on the producer side, then failing with one clear ``BackendError``.

A Redis restart or failover makes every command fail for a few seconds. The producer's calls (submit,
status, wait, cancel, retry) and the CLI retry such failures with a short backoff for a grace period
(``FANFLOW_OUTAGE_GRACE_S``) and then raise ``BackendError`` with one line: what was unreachable (host
and port, never the password), why, and what to do. Only outages are retried: a wrong password, a
script error or an unknown job fail at once.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import TypeVar
from urllib.parse import urlsplit

import redis
from kombu.exceptions import OperationalError

from fanflow.errors import BackendError, FanflowError

__all__ = ["OutageGuard", "describe_exception", "is_outage", "redis_endpoint"]

T = TypeVar("T")

#: Errors meaning "Redis (or the broker) cannot be reached right now": connection refused or reset,
#: a timeout, Redis still loading its data after a restart (``BusyLoadingError`` is a
#: ``ConnectionError``), a replica not yet promoted, kombu's wrapper of any of these.
_OUTAGE_ERRORS: tuple[type[BaseException], ...] = (
    redis.ConnectionError,
    redis.TimeoutError,
    redis.ReadOnlyError,
    OperationalError,
    ConnectionError,
)
#: Never an outage: retrying does not help (wrong password, missing permission).
_PERMANENT_ERRORS: tuple[type[BaseException], ...] = (
    redis.exceptions.AuthenticationError,
    redis.exceptions.AuthorizationError,
)

_CREDENTIALS = re.compile(r"(\w+://)[^@/\s]*@")

FIRST_DELAY_S = 0.1
MAX_DELAY_S = 1.0


def _chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and the exceptions it was raised from (``__cause__``, else unsuppressed ``__context__``)."""
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and all(current is not seen for seen in chain):
        chain.append(current)
        current = current.__cause__ or (None if current.__suppress_context__ else current.__context__)
    return chain


def is_outage(exc: BaseException) -> bool:
    """True when ``exc`` says Redis or the broker is unreachable for now (worth retrying briefly).

    fanflow's own errors count only as a ``BackendError`` raised from such an error; a
    ``JobTimeoutError`` (a ``TimeoutError`` too) or ``JobNotFoundError`` never does.
    """
    chain = _chain(exc)
    if isinstance(exc, FanflowError) and not isinstance(exc, BackendError):
        return False
    if any(isinstance(link, _PERMANENT_ERRORS) for link in chain):
        return False
    return any(isinstance(link, _OUTAGE_ERRORS) for link in chain)


def redis_endpoint(url: str | None) -> str:
    """``host:port`` (or the socket path) of a Redis / broker URL, without user name or password."""
    if not url:
        return "(not configured)"
    try:
        parts = urlsplit(url)
        if parts.scheme in ("unix", "redis+socket"):
            return parts.path or "(unix socket)"
        host = parts.hostname or "localhost"
        port = parts.port or (6379 if parts.scheme.startswith("redis") else None)
    except ValueError:
        return "(unparsable URL)"
    host = f"[{host}]" if ":" in host else host
    return f"{host}:{port}" if port else host


def describe_exception(exc: BaseException) -> str:
    """One line about ``exc``: the most telling error of its chain, credentials in URLs masked.

    Prefers the Redis client's own error (``ConnectionError: Error 111 connecting to host:6379.
    Connection refused.``) over the wrappers around it (kombu's, fanflow's ``BackendError``).
    """
    chain = _chain(exc)
    cause = next((link for link in chain if isinstance(link, redis.RedisError)), chain[0])
    text = _CREDENTIALS.sub(r"\1***@", " ".join(str(cause).split()))
    name = type(cause).__name__
    return f"{name}: {text}" if text else name


class OutageGuard:
    """Calls a function, retrying it through an outage of up to ``grace_s`` seconds.

    Args:
        grace_s: how long to keep retrying (0: try once).
        where: what is being reached, for the error (``Redis at 10.0.0.5:6379``).
        hint: what the user can do, for the error.
        sleep, clock: injectable for tests.
    """

    def __init__(
        self,
        grace_s: float,
        where: str,
        *,
        hint: str = "check that it is running and reachable",
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.grace_s = max(0.0, grace_s)
        self.where = where
        self.hint = hint
        self._sleep = sleep
        self._clock = clock

    def call(
        self,
        fn: Callable[[], T],
        what: str,
        *,
        until: float | None = None,
        where: str | None = None,
        hint: str | None = None,
        give_up: Callable[[], str] | None = None,
    ) -> T:
        """Return ``fn()``; retry it with a short backoff while it fails with an outage.

        Args:
            fn: the call; it must be safe to repeat (reads, idempotent writes).
            what: what the call does, for the error (``reading job 3fa… status``).
            until: a ``clock()`` time to stop retrying at, if earlier than the grace allows.
            where, hint: override the guard's ``where`` and ``hint`` for this call.
            give_up: called once when the outage outlasts the grace (to clean up); what it returns
                goes into the error, before the hint.

        Raises:
            BackendError: the outage lasted longer than the grace (or ``until``); one line.
            Exception: whatever ``fn`` raised that is not an outage, unchanged.
        """
        start = self._clock()
        end = start + self.grace_s if until is None else min(start + self.grace_s, until)
        delay = FIRST_DELAY_S
        while True:
            try:
                return fn()
            except Exception as exc:
                if not is_outage(exc):
                    raise
                now = self._clock()
                if now >= end:
                    note = give_up() if give_up is not None else ""
                    raise self.error(exc, what, now - start, where=where, hint=hint, note=note) from exc
                self._sleep(min(delay, end - now))
                delay = min(delay * 2, MAX_DELAY_S)

    def error(
        self,
        exc: BaseException,
        what: str,
        waited_s: float,
        *,
        where: str | None = None,
        hint: str | None = None,
        note: str = "",
    ) -> BackendError:
        """The one-line ``BackendError`` for an outage that outlasted the grace.

        ``what: where unreachable for 10s (ConnectionError: ...); note; hint``
        """
        waited = f" for {waited_s:.0f}s" if waited_s >= 0.5 else ""
        parts = [f"{what}: {where or self.where} unreachable{waited} ({describe_exception(exc)})"]
        parts += [part for part in (note, hint or self.hint) if part]
        return BackendError(" ".join("; ".join(parts).split()))
