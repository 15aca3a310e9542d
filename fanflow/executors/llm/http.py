"""HTTP plumbing shared by both wire APIs: per-thread clients, error mapping, ``Retry-After``.

Each worker thread has its own ``httpx.Client`` per base URL, created on first use: a thread makes
one call at a time, so its client keeps one connection alive and no pool is shared. (One client
shared by hundreds of threads costs milliseconds of CPU per call — httpcore's pool walks every
connection it holds on each request — and was seen failing calls with "Bad file descriptor".) Every
client shares one TLS context (the CA bundle is loaded once). A forked child starts with no clients,
so it never shares a parent's sockets. Nothing here retries: the branch runner owns retries.
"""

from __future__ import annotations

import math
import os
import ssl
import threading
import time
from collections.abc import Mapping

import httpx

from fanflow.errors import ExecutorError, ProviderError, RateLimitedError, TransientError
from fanflow.ratelimit.headers import parse_headers

__all__ = [
    "CONNECT_TIMEOUT_S",
    "DEFAULT_TIMEOUT_S",
    "MAX_ERROR_CHARS",
    "close_clients",
    "get_client",
    "http_error",
    "malformed",
    "retry_after_s",
    "timeout_for",
]

DEFAULT_TIMEOUT_S = 600.0
CONNECT_TIMEOUT_S = 10.0
MAX_ERROR_CHARS = 500
_LIMITS = httpx.Limits(max_connections=None, max_keepalive_connections=8)

_lock = threading.Lock()
_clients: list[httpx.Client] = []  # every client made, to close them all
_generation = 0  # bumped by close_clients: threads then make new clients
_ssl_context: ssl.SSLContext | None = None
_thread = threading.local()


def get_client(base_url: str) -> httpx.Client:
    """This thread's client for ``base_url`` (created on first use)."""
    mine: dict[str, httpx.Client] | None = getattr(_thread, "clients", None)
    if mine is None or getattr(_thread, "generation", -1) != _generation:
        mine = _thread.clients = {}
        _thread.generation = _generation
    client = mine.get(base_url)
    if client is None:
        global _ssl_context
        with _lock:
            if _ssl_context is None:
                _ssl_context = httpx.create_ssl_context()
            client = httpx.Client(
                verify=_ssl_context, limits=_LIMITS,
                timeout=httpx.Timeout(DEFAULT_TIMEOUT_S, connect=CONNECT_TIMEOUT_S), follow_redirects=False,
            )  # fmt: skip
            _clients.append(client)
        mine[base_url] = client
    return client


def close_clients() -> None:
    """Close every client of this process (tests; shutdown). The next call opens new ones."""
    global _generation
    with _lock:
        clients = list(_clients)
        _clients.clear()
        _generation += 1
    for client in clients:
        client.close()


def _forget_after_fork() -> None:
    # The parent's sockets must not be used (or closed) by a child: start over without them.
    global _lock, _generation
    _lock = threading.Lock()
    _clients.clear()
    _generation += 1


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_after_fork)


def timeout_for(timeout_s: float | None) -> httpx.Timeout:
    """The timeout of one call: ``timeout_s`` (default 600 s) for each phase, connect at most 10 s."""
    total = timeout_s if timeout_s and timeout_s > 0 else DEFAULT_TIMEOUT_S
    return httpx.Timeout(total, connect=min(CONNECT_TIMEOUT_S, total))


def retry_after_s(headers: Mapping[str, str], *, resets: bool = True) -> float | None:
    """How long the provider asks us to wait, in seconds; None when its headers do not say.

    Precedence: ``retry-after-ms``, then ``retry-after`` (seconds or an HTTP date), then (with
    ``resets``) the rate-limit reset headers of the exhausted windows (``x-ratelimit-reset-*``
    durations, ``anthropic-ratelimit-*-reset`` timestamps); when no window reports
    ``remaining: 0``, the latest reset of the windows that report no remaining count at all.
    """
    parsed = parse_headers(headers)
    if parsed.retry_after_s is not None:
        return parsed.retry_after_s
    if not resets or not parsed.windows:
        return None
    windows = list(parsed.windows.values())
    exhausted = [w for w in windows if w.remaining == 0] or [w for w in windows if w.remaining is None]
    now = time.time()
    waits: list[float] = []
    for window in exhausted:
        if window.reset_after_s is not None:
            waits.append(window.reset_after_s)
        elif window.reset_at is not None:
            waits.append(max(window.reset_at - now, 0.0))
    waits = [w for w in waits if math.isfinite(w)]
    return max(waits) if waits else None


def _clean(text: str, secret: str | None) -> str:
    if secret and len(secret) >= 4 and secret in text:
        text = text.replace(secret, "***")
    text = " ".join(text.split())
    if len(text) > MAX_ERROR_CHARS:
        text = text[: MAX_ERROR_CHARS - 3] + "..."
    return text


def http_error(
    provider_name: str,
    status: int,
    error_type: str | None,
    message: str | None,
    headers: Mapping[str, str],
    *,
    overloaded: bool = False,
    secret: str | None = None,
) -> ExecutorError:
    """The exception for a provider's non-2xx answer.

    Args:
        provider_name: shown in the message.
        status: HTTP status.
        error_type: the provider's error type (``rate_limit_error``, ``invalid_request_error`` ...).
        message: the provider's error message.
        headers: response headers, lower-case names.
        overloaded: the provider said it is overloaded (treated like a 429).
        secret: the API key, removed from the message should the provider have echoed it.

    Returns:
        ``RateLimitedError`` for 429, 529 or an overload; ``TransientError`` for 408, 409, other 5xx
        and anything that is not a 4xx; ``ProviderError`` for the other 4xx. The message holds the
        status, the error type and message only (at most 500 characters).
    """
    detail = f"{provider_name}: HTTP {status}"
    if error_type:
        detail += f" {error_type}"
    if message:
        detail += f": {message}"
    detail = _clean(detail, secret)
    if status in (429, 529) or overloaded:
        return RateLimitedError(detail, retry_after_s=retry_after_s(headers))
    if 400 <= status < 500 and status not in (408, 409):
        return ProviderError(detail, status=status)
    if 300 <= status < 400:
        return ProviderError(detail + " (redirect: check the provider's base URL)", status=status)
    return TransientError(detail, retry_after_s=retry_after_s(headers, resets=False))


def malformed(provider_name: str, status: int, what: str) -> TransientError:
    """The exception for a 2xx answer that is not the JSON the API promises."""
    return TransientError(_clean(f"{provider_name}: malformed response (HTTP {status}): {what}", None))
