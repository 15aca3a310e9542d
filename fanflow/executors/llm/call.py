"""``call_model``: one HTTP request to a provider, no retries (the branch runner owns those)."""

from __future__ import annotations

import json
import os
import re

import httpx

from fanflow.errors import ConfigError, TransientError
from fanflow.executors.llm import anthropic_wire, openai_wire
from fanflow.executors.llm.http import get_client, malformed, timeout_for
from fanflow.executors.llm.request import LLMReply, LLMRequest

__all__ = ["api_key", "call_model", "read_response"]

_HEADER_SAFE = re.compile(r"[\x21-\x7e]+")


def api_key(request: LLMRequest) -> str | None:
    """The provider's key from this process's environment.

    Raises:
        ConfigError: the provider needs a key and its variable is not set.
    """
    spec = request.provider
    if spec.api_key_env is None:
        return None
    key = os.environ.get(spec.api_key_env, "").strip()
    if not key:
        if spec.key_required:
            raise ConfigError(f"{spec.api_key_env} is not set on this worker")
        return None
    if not _HEADER_SAFE.fullmatch(key):
        # Caught here, because the HTTP layer would name the offending value (the key) in its error.
        raise ConfigError(f"{spec.api_key_env} holds characters an HTTP header cannot carry")
    return key


def _transport_error(name: str, host: str, exc: Exception, secret: str | None) -> Exception:
    if isinstance(exc, httpx.UnsupportedProtocol | httpx.InvalidURL):
        return ConfigError(f"{name}: the base URL is not a valid http(s) URL ({type(exc).__name__})")
    kind = type(exc).__name__
    if isinstance(exc, httpx.TimeoutException):
        return TransientError(f"{name} ({host}): {kind}: no answer in time")
    detail = str(exc).strip()
    if secret and secret in detail:
        detail = detail.replace(secret, "***")
    return TransientError(f"{name} ({host}): {kind}" + (f": {detail[:300]}" if detail else ""))


def _host(base_url: str) -> str:
    try:
        return httpx.URL(base_url).host or "?"
    except (httpx.InvalidURL, TypeError, ValueError):
        return "?"


def call_model(request: LLMRequest) -> LLMReply:
    """Make the call over the process's shared connection pool and read the answer.

    Raises:
        ConfigError: the provider's key is not set, or its base URL is not usable.
        RateLimitedError: 429, 529 or an overload answer (``retry_after_s`` from the headers).
        TransientError: 408, 409, other 5xx, a connection error or timeout, or a 2xx body that is
            not what the API promises.
        ProviderError: another 4xx (the provider will keep refusing this request).
    """
    spec = request.provider
    key = api_key(request)
    if spec.api == "anthropic":
        url = anthropic_wire.endpoint(spec.base_url)
        body = anthropic_wire.build_body(request)
        auth = anthropic_wire.request_headers(key)
    else:
        url = openai_wire.endpoint(spec.base_url)
        body = openai_wire.build_body(request)
        auth = openai_wire.request_headers(key)
    try:
        response = get_client(spec.base_url).post(
            url, json=body, headers=auth, timeout=timeout_for(request.timeout_s)
        )
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        raise _transport_error(spec.name, _host(spec.base_url), exc, key) from None
    return read_response(request, response, secret=key)


def read_response(request: LLMRequest, response: httpx.Response, *, secret: str | None = None) -> LLMReply:
    """The reply in a provider's answer, or the exception its status and body call for.

    Args:
        request: the request answered.
        response: the provider's answer (its body read).
        secret: the API key used, scrubbed from error messages should the provider echo it.

    Raises:
        RateLimitedError, TransientError, ProviderError: as for ``call_model``.
    """
    spec = request.provider
    wire = anthropic_wire if spec.api == "anthropic" else openai_wire
    headers = dict(response.headers.multi_items())  # lower-case names; 3x faster than dict(headers)
    status = response.status_code
    content = response.content
    try:
        data = json.loads(content) if content else None
    except ValueError:
        data = None
    if 200 <= status < 300:
        if data is None:
            raise malformed(spec.name, status, "the body is not JSON")
        reply: LLMReply = wire.parse_response(request, data, headers, status=status)
        return reply
    error: Exception = wire.error_from(spec.name, status, data, headers, secret=secret)
    raise error
