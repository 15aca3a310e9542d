"""The Redis a benchmark runs on: the one given, else an embedded ``redis-server`` for the run."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from fanflow.embedded import EmbeddedRedis

__all__ = ["redis_url"]


@contextlib.contextmanager
def redis_url(given: str | None) -> Iterator[tuple[str, str]]:
    """The Redis to use and how to describe it (never the URL: it may hold a password)."""
    if given:
        yield given, "given URL"
        return
    with EmbeddedRedis() as server:
        yield server.url, "embedded redis-server"
