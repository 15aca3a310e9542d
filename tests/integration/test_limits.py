"""Shared limits on branches (``Subtask.limits``) through a real worker: admitted, deferred, cooled down."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest

from fanflow import Client
from fanflow.app import limiter_of
from fanflow.ratelimit import Limit
from fanflow.result import JobStatus
from tests.callables import calls, intervals, max_overlap, max_starts_in_window
from tests.specs import throttled_fanout, timed_fanout

pytestmark = pytest.mark.integration


def _key() -> str:
    return f"test-{secrets.token_hex(4)}"


def test_a_concurrency_limit_holds(client: Client, tmp_path: Path) -> None:
    key = _key()
    limiter_of(client.app).set_limit(Limit(key=key, concurrency=2))
    result = client.submit(timed_fanout(tmp_path, 8, key, 0.3)).wait(timeout=60)
    assert result.status is JobStatus.SUCCEEDED
    assert all(outcome.attempts == 1 for outcome in result.outcomes)
    assert max_overlap(intervals(str(tmp_path))) <= 2
    status = limiter_of(client.app).status(key)
    assert status is not None and status.in_flight == 0  # every slot given back


def test_a_request_rate_holds_and_long_waits_are_deferred_without_counting(
    client: Client, tmp_path: Path
) -> None:
    key = _key()
    limiter_of(client.app).set_limit(Limit(key=key, requests=4, window_s=1.0))
    handle = client.submit(timed_fanout(tmp_path, 16, key, 0.0))
    result = handle.wait(timeout=60)
    assert result.status is JobStatus.SUCCEEDED
    spans = intervals(str(tmp_path))
    assert len(spans) == 16
    assert max_starts_in_window(spans, 1.0) <= 4
    assert all(outcome.attempts == 1 for outcome in result.outcomes)
    store = client.store
    deliveries = store.client.hgetall(store.keys(handle.job_id).deliveries)
    assert set(deliveries.values()) == {"1"}, deliveries  # a deferral is not a delivery
    assert handle.progress().merges == 1


def test_a_429_cools_the_key_down_and_does_not_count_as_an_attempt(client: Client, tmp_path: Path) -> None:
    key = _key()
    limiter_of(client.app).set_limit(Limit(key=key, requests=1000, window_s=60))
    spec = throttled_fanout(tmp_path, key, 0.5)
    result = client.submit(spec).wait(timeout=30)
    assert result.status is JobStatus.SUCCEEDED
    assert result.outcome("t").attempts == 1
    assert calls(str(tmp_path), "t") == 2
    assert (result.outcome("t").duration_s or 0) >= 0.45  # it waited out the cool-down
