"""Shared fixtures: a real Redis for the whole session (embedded unless FANFLOW_TEST_REDIS_URL is set)."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator

import pytest

from fanflow.config import Settings
from fanflow.embedded import EmbeddedRedis


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """URL of a real Redis: ``FANFLOW_TEST_REDIS_URL``, or a private redis-server for this session."""
    url = os.environ.get("FANFLOW_TEST_REDIS_URL")
    if url:
        yield url
        return
    with EmbeddedRedis() as server:
        yield server.url


@pytest.fixture(scope="session")
def settings(redis_url: str) -> Settings:
    """Settings on the test Redis, under a key prefix of this session's own."""
    base = Settings(key_prefix=f"fanflow-test-{secrets.token_hex(4)}", task_events=False)
    return base.with_redis(redis_url)
