"""A fake model server: real HTTP/1.1 on 127.0.0.1 speaking OpenAI's and Anthropic's wire formats.

For tests, benchmarks and the offline demo: the real client code calls it over sockets, exactly as
it calls a provider. One asyncio loop in a daemon thread serves every connection (keep-alive,
thousands at once), so waiting ``latency_s`` per request costs a timer, not a thread.

Endpoints: ``POST /v1/chat/completions`` (OpenAI; ``Authorization: Bearer <any>``),
``POST /v1/messages`` (Anthropic; ``x-api-key`` and ``anthropic-version``), ``GET /v1/models``.

Steering, from the same process (``fail_next``, ``reply_next``, ``set_latency``) or from anywhere
through directives in the last user message: ``[[fake:latency=0.5]]``, ``[[fake:reply=TEXT]]``,
``[[fake:json={"a":1}]]``, ``[[fake:tool=NAME]]``, ``[[fake:status=500]]``, ``[[fake:malformed]]``,
``[[fake:cached=N]]``.

Example::

    with FakeLLM(latency_s=0.1) as server:
        httpx.post(server.url + "/v1/chat/completions", headers={"Authorization": "Bearer x"}, json=...)
        assert server.count == 1

Recorded requests keep their headers as sent (the API key included), in memory only.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import signal
import threading
import time
from collections import Counter, deque
from collections.abc import Mapping
from dataclasses import dataclass
from types import FrameType, TracebackType
from typing import Any

from fanflow.dev import fake_http as http
from fanflow.dev import fake_wire as wire
from fanflow.dev.fake_limits import RateLimits

__all__ = ["FakeLLM", "RecordedRequest", "serve"]

logger = logging.getLogger("fanflow")

#: Recorded requests kept (the oldest are dropped).
MAX_RECORDED = 10_000
_BACKLOG = 4096
_MALFORMED = b'<html><body>502 upstream said {"choices": [</body></html>'
_ANTHROPIC_PATHS = ("/v1/messages",)
_ROUTES = {"/v1/chat/completions": "POST", "/v1/messages": "POST", "/v1/models": "GET"}
_CREATED = 1735689600
_MODELS = ("gpt-4o-mini", "gpt-4o", "gpt-4.1-mini", "claude-sonnet-4-5", "claude-haiku-4-5", "fake-model")


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    """One request the server received.

    Attributes:
        path: the request path, without the query string.
        headers: its headers, names in lower case.
        body: the parsed JSON body, or None (no body, or not JSON).
        started_at: when it was read, seconds since the epoch.
        method: the HTTP method.
    """

    path: str
    headers: dict[str, str]
    body: Any
    started_at: float
    method: str = "POST"


@dataclass(frozen=True, slots=True)
class _Failure:
    status: int
    retry_after_s: float | None
    body: Any


def _seconds_text(seconds: float) -> str:
    return str(int(seconds)) if float(seconds).is_integer() else f"{seconds:.3f}".rstrip("0")


def _api_for(path: str, headers: Mapping[str, str]) -> wire.Api:
    if path in _ANTHROPIC_PATHS or "anthropic-version" in headers or "x-api-key" in headers:
        return "anthropic"
    return "openai"


class FakeLLM:
    """The fake model server; ``start()`` it (or use it as a context manager), ``stop()`` it.

    Args:
        host: address to listen on.
        port: port to listen on (0: a free one, see ``url``).
        latency_s: how long each model request waits before it is answered.
        rate_limits: per-minute limits (``{"requests": 500, "tokens": 200000}``) reported in the
            provider's rate-limit headers on every response; None sends no such headers.
        cached_tokens: prompt tokens reported as read from a prompt cache (``[[fake:cached=N]]``
            overrides it per request).
        enforce_rate_limits: answer 429 (with ``retry-after``) to a request the ``rate_limits``
            cannot take now, instead of only reporting them.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        latency_s: float = 0.0,
        *,
        rate_limits: Mapping[str, int] | None = None,
        cached_tokens: int = 0,
        enforce_rate_limits: bool = False,
    ) -> None:
        if latency_s < 0:
            raise ValueError("latency_s must be >= 0")
        self._host, self._port = host, port
        self._latency_s = latency_s
        self._cached_tokens = cached_tokens
        self._limits = RateLimits(rate_limits) if rate_limits else None
        self._enforce = enforce_rate_limits and self._limits is not None
        self._lock = threading.Lock()
        self._recorded: deque[RecordedRequest] = deque(maxlen=MAX_RECORDED)
        self._by_path: Counter[str] = Counter()
        self._failures: deque[_Failure] = deque()
        self._replies: deque[str] = deque()
        self._seq = itertools.count(1)
        self._request_ids = itertools.count(1)
        self.count = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None
        self._startup_error: BaseException | None = None
        self._connections: set[asyncio.Task[None]] = set()

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> FakeLLM:
        """Listen and serve in a daemon thread; returns self once the socket is bound.

        Raises:
            RuntimeError: already started.
            OSError: the address could not be bound.
        """
        if self._thread is not None:
            raise RuntimeError("the fake model server is already started")
        ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(ready,), name="fanflow-fake-llm", daemon=True)
        self._thread.start()
        ready.wait()
        if self._startup_error is not None:
            self._thread.join()
            self._thread = None
            raise self._startup_error
        return self

    def stop(self) -> None:
        """Close every connection and the listening socket, and end the thread (idempotent)."""
        thread, loop, event = self._thread, self._loop, self._stop_event
        if thread is None or loop is None or event is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop is already closed
            loop.call_soon_threadsafe(event.set)
        thread.join(timeout=30)
        self._thread = None

    def __enter__(self) -> FakeLLM:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """``http://HOST:PORT``: OpenAI's base URL is ``url + "/v1"``, Anthropic's ``url``."""
        if self._thread is None:
            raise RuntimeError("the fake model server is not started")
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self._port}"

    @property
    def port(self) -> int:
        """The port it listens on (once started)."""
        return self._port

    def _run(self, ready: threading.Event) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._stop_event = asyncio.Event()
        try:
            server = loop.run_until_complete(
                asyncio.start_server(
                    self._connection, self._host, self._port, backlog=_BACKLOG, limit=http.HEAD_LIMIT
                )
            )
        except OSError as exc:
            self._startup_error = exc
            loop.close()
            ready.set()
            return
        self._port = server.sockets[0].getsockname()[1]
        ready.set()
        try:
            loop.run_until_complete(self._serve_until_stopped(server))
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            loop.close()

    async def _serve_until_stopped(self, server: asyncio.Server) -> None:
        assert self._stop_event is not None
        await self._stop_event.wait()
        server.close()
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        await server.wait_closed()

    # -- controls (thread-safe) ------------------------------------------------------------

    def fail_next(
        self, n: int = 1, status: int = 429, retry_after_s: float | None = 1.0, body: Any = None
    ) -> None:
        """Answer the next ``n`` model requests with an error, at once (no latency).

        Args:
            n: how many requests.
            status: HTTP status (429: ``rate_limit_error``, 529: Anthropic's ``overloaded_error``).
            retry_after_s: sent as ``retry-after`` (seconds) and, to OpenAI clients,
                ``retry-after-ms``, on 429, 503 and 529; None sends neither.
            body: the response body instead of the provider's error object (a dict or list is
                sent as JSON, a str or bytes as is).
        """
        with self._lock:
            self._failures.extend(_Failure(status, retry_after_s, body) for _ in range(n))

    def reply_next(self, *texts: str) -> None:
        """Answer the next model requests with these texts, in order (then the default again)."""
        with self._lock:
            self._replies.extend(texts)

    def set_latency(self, latency_s: float) -> None:
        """Wait ``latency_s`` before answering each model request from now on."""
        if latency_s < 0:
            raise ValueError("latency_s must be >= 0")
        self._latency_s = latency_s

    @property
    def latency_s(self) -> float:
        """The current latency per model request."""
        return self._latency_s

    def reset(self) -> None:
        """Forget recorded requests, counters, pending failures and replies; refill rate limits."""
        with self._lock:
            self._recorded.clear()
            self._by_path.clear()
            self._failures.clear()
            self._replies.clear()
            self.count = 0
            self.max_in_flight = self.in_flight
            if self._limits is not None:
                self._limits.reset()

    # -- observability ---------------------------------------------------------------------

    @property
    def requests(self) -> list[RecordedRequest]:
        """The requests received, oldest first (the last ``MAX_RECORDED``)."""
        with self._lock:
            return list(self._recorded)

    def requests_by_path(self) -> dict[str, int]:
        """How many requests each path received (since the start or ``reset()``)."""
        with self._lock:
            return dict(self._by_path)

    # -- HTTP ------------------------------------------------------------------------------

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            while True:
                try:
                    request = await http.read_request(reader, writer)
                except http.BadRequest as exc:
                    body = json.dumps(wire.error_body("openai", exc.status, str(exc))).encode()
                    writer.write(http.encode(http.Response(exc.status, body, {}), keep_alive=False))
                    await writer.drain()
                    return
                if request is None:
                    return
                response = await self._handle(request)
                writer.write(http.encode(response, keep_alive=request.keep_alive))
                await writer.drain()
                if not request.keep_alive:
                    return
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        except asyncio.CancelledError:
            # Cancelled by stop(): end normally, as Python 3.11's stream protocol reports a
            # cancelled connection task as an error.
            pass
        finally:
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(ConnectionError, asyncio.CancelledError):
                await writer.wait_closed()

    async def _handle(self, request: http.Request) -> http.Response:
        method, headers, raw = request.method, request.headers, request.body
        path = request.target.split("?", 1)[0]
        body: Any = None
        if raw:
            with contextlib.suppress(ValueError):
                body = json.loads(raw)
        api = _api_for(path, headers)
        with self._lock:
            self._recorded.append(RecordedRequest(path, headers, body, time.time(), method))
            self._by_path[path] += 1
            self.count += 1
            number = next(self._request_ids)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            bad_json = bool(raw) and body is None
            response = await self._route(api, method, path, headers, body, bad_json=bad_json)
        except wire.WireError as exc:
            response = self._error(api, exc.status, exc.message, exc.retry_after_s)
        except Exception:
            logger.exception("fake model server: error while answering %s %s", method, path)
            response = self._error(api, 500, "")
        finally:
            self.in_flight -= 1
        request_id = "request-id" if api == "anthropic" else "x-request-id"
        response.headers.setdefault(request_id, f"req_fake{number:08d}")
        if self._limits is not None:
            with self._lock:
                response.headers.update(self._limits.headers(api))
        return response

    def _error(
        self, api: wire.Api, status: int, message: str, retry_after_s: float | None = None
    ) -> http.Response:
        error = wire.WireError(status, message)
        body = json.dumps(wire.error_body(api, status, error.message)).encode()
        headers: dict[str, str] = {}
        if retry_after_s is not None and status in (429, 503, 529):
            headers["retry-after"] = _seconds_text(retry_after_s)
            if api == "openai":
                headers["retry-after-ms"] = str(round(retry_after_s * 1000))
        return http.Response(status, body, headers)

    async def _route(
        self, api: wire.Api, method: str, path: str, headers: dict[str, str], body: Any, *, bad_json: bool
    ) -> http.Response:
        allowed = _ROUTES.get(path)
        if allowed is None:
            raise wire.WireError(404, f"Invalid URL ({method} {path})")
        if method != allowed:
            response = self._error(api, 405, f"method {method} is not allowed on {path}")
            response.headers["allow"] = allowed
            return response
        wire.check_auth(api, headers)
        if path == "/v1/models":
            return self._models(api)
        if bad_json or body is None:
            raise wire.WireError(400, "could not parse the JSON body of your request")
        wire.validate_request(api, body)
        return await self._answer(api, body)

    def _models(self, api: wire.Api) -> http.Response:
        if api == "anthropic":
            data: list[dict[str, Any]] = [
                {"type": "model", "id": m, "display_name": m, "created_at": "2025-01-01T00:00:00Z"}
                for m in _MODELS
            ]
            listing: dict[str, Any] = {"data": data, "has_more": False}
            listing.update(first_id=_MODELS[0], last_id=_MODELS[-1])
        else:
            data = [{"id": m, "object": "model", "created": _CREATED, "owned_by": "fanflow"} for m in _MODELS]
            listing = {"object": "list", "data": data}
        return http.Response(200, json.dumps(listing).encode(), {})

    async def _answer(self, api: wire.Api, body: dict[str, Any]) -> http.Response:
        with self._lock:
            failure = self._failures.popleft() if self._failures else None
        if failure is not None:
            return self._failure(api, failure)
        directives = wire.parse_directives(wire.last_user_text(body))
        prompt = wire.prompt_tokens(body)
        if self._enforce and self._limits is not None:
            with self._lock:
                wait_s = self._limits.wait_s(prompt)
            if wait_s > 0:
                return self._error(api, 429, "rate limit reached for requests or tokens", max(wait_s, 0.001))
        latency_s = directives.latency_s if directives.latency_s is not None else self._latency_s
        if latency_s > 0:
            await asyncio.sleep(latency_s)
        if directives.status is not None:
            status = directives.status
            return self._error(api, status, "", 1.0 if status == 429 else None)
        if directives.malformed:
            self._charge(prompt)
            return http.Response(200, _MALFORMED, {})
        override = directives.json_text if directives.json_text is not None else directives.reply
        if override is None:
            with self._lock:
                override = self._replies.popleft() if self._replies else None
        reply = wire.plan_reply(api, body, directives.tool, override)
        cached = directives.cached if directives.cached is not None else self._cached_tokens
        payload, completion = wire.render_reply(
            api, body, reply, prompt=prompt, cached=cached, seq=next(self._seq), created=int(time.time())
        )
        self._charge(prompt + completion)
        return http.Response(200, json.dumps(payload, ensure_ascii=False).encode(), {})

    def _charge(self, tokens: int) -> None:
        if self._limits is not None:
            with self._lock:
                self._limits.charge(tokens)

    def _failure(self, api: wire.Api, failure: _Failure) -> http.Response:
        response = self._error(api, failure.status, "", failure.retry_after_s)
        if failure.body is not None:
            raw = failure.body
            if isinstance(raw, str):
                raw = raw.encode()
            elif not isinstance(raw, bytes):
                raw = json.dumps(raw).encode()
            response.body = raw
        return response


def serve(host: str = "127.0.0.1", port: int = 8089, latency_s: float = 0.0, **options: Any) -> None:
    """Run a ``FakeLLM`` in the foreground until Ctrl-C (or SIGTERM); prints where it listens.

    Args:
        host: address to listen on.
        port: port to listen on.
        latency_s: latency per model request.
        **options: further ``FakeLLM`` keyword arguments (``rate_limits``, ``cached_tokens``, ...).
    """
    stopped = threading.Event()

    def _on_term(signum: int, frame: FrameType | None) -> None:
        stopped.set()

    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _on_term)
    with FakeLLM(host, port, latency_s, **options) as server:
        print(
            f"fake model server on {server.url} (OpenAI base {server.url}/v1, Anthropic base {server.url})",
            flush=True,
        )
        try:
            while not stopped.wait(0.5):
                pass
        except KeyboardInterrupt:
            pass
    if previous is not None:
        signal.signal(signal.SIGTERM, previous)
