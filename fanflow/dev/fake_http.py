"""A minimal HTTP/1.1 layer on asyncio streams for the fake model server.

Request heads up to 1 MiB, bodies by ``Content-Length`` or chunked, ``Expect: 100-continue``,
keep-alive by default on HTTP/1.1 and ``Connection: close`` honoured. Every response is JSON.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from email.utils import formatdate
from http import HTTPStatus

__all__ = ["HEAD_LIMIT", "BadRequest", "Request", "Response", "encode", "read_request"]

#: Longest request head accepted (the stream reader's limit).
HEAD_LIMIT = 1 << 20
_MAX_BODY = 64 << 20
_IDLE_S = 300.0


@dataclass(frozen=True, slots=True)
class Request:
    """A request as read: method, target (path and query), header names in lower case, raw body."""

    method: str
    target: str
    headers: dict[str, str]
    body: bytes
    keep_alive: bool


@dataclass(slots=True)
class Response:
    """A JSON response to send."""

    status: int
    body: bytes
    headers: dict[str, str]


class BadRequest(Exception):
    """The bytes received are not a request this server reads (answered, then the connection closed)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class _DateCache:
    """The ``date`` header, formatted once per second."""

    def __init__(self) -> None:
        self._second = -1
        self._text = ""

    def now(self) -> str:
        second = int(time.time())
        if second != self._second:
            self._second, self._text = second, formatdate(second, usegmt=True)
        return self._text


_DATES = _DateCache()


def _parse_head(head: bytes) -> tuple[str, str, str, dict[str, str]]:
    """(method, target, version, headers with lower-case names) of a request head."""
    lines = head.decode("latin-1").lstrip("\r\n").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise BadRequest(400, "malformed request line")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise BadRequest(400, "malformed header line")
        name, value = name.lower(), value.strip()
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    return parts[0], parts[1], parts[2], headers


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    chunks: list[bytes] = []
    total = 0
    while True:
        line = await reader.readuntil(b"\r\n")
        try:
            size = int(line.split(b";")[0].strip(), 16)
        except ValueError:
            raise BadRequest(400, "malformed chunk size") from None
        if size == 0:
            while await reader.readuntil(b"\r\n") != b"\r\n":  # trailers
                pass
            return b"".join(chunks)
        total += size
        if total > _MAX_BODY:
            raise BadRequest(413, "request body too large")
        chunks.append(await reader.readexactly(size))
        await reader.readexactly(2)


async def _read_body(reader: asyncio.StreamReader, headers: dict[str, str]) -> bytes:
    if "transfer-encoding" in headers:
        if headers["transfer-encoding"].lower() != "chunked":
            raise BadRequest(501, "only chunked transfer-encoding is supported")
        return await _read_chunked(reader)
    text = headers.get("content-length")
    if text is None:
        return b""
    if not text.isdigit():
        raise BadRequest(400, "malformed content-length")
    length = int(text)
    if length > _MAX_BODY:
        raise BadRequest(413, "request body too large")
    return await reader.readexactly(length) if length else b""


def _keep_alive(version: str, headers: dict[str, str]) -> bool:
    tokens = {token.strip().lower() for token in headers.get("connection", "").split(",")}
    return "keep-alive" in tokens if version == "HTTP/1.0" else "close" not in tokens


async def read_request(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> Request | None:
    """The next request on a connection; None when the peer closed it or stayed idle too long.

    Raises:
        BadRequest: the request could not be read.
    """
    try:
        async with asyncio.timeout(_IDLE_S):
            head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, TimeoutError):
        return None
    except asyncio.LimitOverrunError:
        raise BadRequest(431, "request head too large") from None
    method, target, version, headers = _parse_head(head)
    if headers.get("expect", "").lower() == "100-continue":
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    body = await _read_body(reader, headers)
    return Request(method, target, headers, body, _keep_alive(version, headers))


def encode(response: Response, *, keep_alive: bool) -> bytes:
    """The bytes of ``response`` (JSON content type, length, date, connection)."""
    try:
        reason = HTTPStatus(response.status).phrase
    except ValueError:
        reason = "Overloaded" if response.status == 529 else "Unknown"
    lines = [
        f"HTTP/1.1 {response.status} {reason}",
        "content-type: application/json",
        f"content-length: {len(response.body)}",
        f"date: {_DATES.now()}",
        "server: fanflow-fake-llm",
        f"connection: {'keep-alive' if keep_alive else 'close'}",
    ]
    lines += [f"{name}: {value}" for name, value in response.headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + response.body
