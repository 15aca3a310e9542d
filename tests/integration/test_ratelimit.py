"""The shared limits on a real Redis: windows, reserve/settle, leases, all-or-none, cool-downs."""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
import redis

from fanflow.config import Settings
from fanflow.ratelimit import Admission, Limit, Limiter, Refusal
from fanflow.ratelimit.limiter import WINDOW_GUARD_MS

#: The limiter holds each window this much longer than declared (calls start after admission).
GUARD = WINDOW_GUARD_MS / 1000

pytestmark = pytest.mark.integration


@pytest.fixture
def client(settings: Settings) -> Iterator[redis.Redis]:
    url = settings.store_url_value
    assert url is not None
    client = redis.Redis.from_url(url, decode_responses=True)
    yield client
    client.close()


@pytest.fixture
def limiter(client: redis.Redis, settings: Settings) -> Limiter:
    return Limiter(client, prefix=f"{settings.key_prefix}-rl-{secrets.token_hex(3)}")


def _admitted(result: Admission | Refusal) -> Admission:
    assert isinstance(result, Admission), result
    return result


def _refused(result: Admission | Refusal) -> Refusal:
    assert isinstance(result, Refusal), result
    return result


def _wait_for_admission(limiter: Limiter, keys: list[str], timeout: float = 5.0) -> Admission:
    deadline = time.monotonic() + timeout
    while True:
        result = limiter.acquire(keys)
        if isinstance(result, Admission):
            return result
        assert time.monotonic() < deadline, result
        time.sleep(min(result.wait_s, 0.05))


def test_limit_config_round_trips_and_validates(limiter: Limiter) -> None:
    limit = Limit(key="openai:gpt-4o-mini", requests=500, tokens=200_000, concurrency=50, window_s=60)
    limiter.set_limit(limit)
    limiter.set_limit(Limit(key="github", requests=10, window_s=1))
    assert limiter.get_limit("openai:gpt-4o-mini") == limit
    assert [lim.key for lim in limiter.limits()] == ["github", "openai:gpt-4o-mini"]
    assert limiter.get_limit("nope") is None
    assert limiter.delete_limit("github") and not limiter.delete_limit("github")
    assert limiter.status("github") is None
    with pytest.raises(ValueError, match="whitespace"):
        Limit(key="has space", requests=1)
    with pytest.raises(ValueError):
        Limit(key="k", requests=0)


def test_requests_window_is_exact_and_slides(limiter: Limiter) -> None:
    limiter.set_limit(Limit(key="api", requests=5, window_s=1))
    early = [_admitted(limiter.acquire(["api"])) for _ in range(2)]
    time.sleep(0.3)
    late = [_admitted(limiter.acquire(["api"])) for _ in range(3)]
    refusal = _refused(limiter.acquire(["api"]))
    assert refusal.key == "api" and refusal.reason == "requests"
    # the oldest admission leaves the window one second after it was admitted
    expected = early[0].admitted_at + 1.0 + GUARD - late[-1].admitted_at
    assert 0.6 < refusal.wait_s <= 0.7 + GUARD and abs(refusal.wait_s - expected) <= 0.05
    time.sleep(refusal.wait_s + 0.02)
    _admitted(limiter.acquire(["api"]))  # both early ones left: 4 in the window
    _admitted(limiter.acquire(["api"]))
    status = limiter.status("api")
    assert status is not None and status.requests_in_window == 5
    refusal = _refused(limiter.acquire(["api"]))
    assert 0.2 < refusal.wait_s <= 0.35  # until the late ones leave


def test_keys_without_a_limit_are_ignored_and_duplicates_count_once(limiter: Limiter) -> None:
    limiter.set_limit(Limit(key="a", requests=2, window_s=10))
    admission = _admitted(limiter.acquire(["a", "free", "a"]))
    assert admission.keys == ("a",)
    _admitted(limiter.acquire(["a"]))
    _refused(limiter.acquire(["a"]))
    assert _admitted(limiter.acquire([])).keys == ()
    assert _admitted(limiter.acquire(["free"])).keys == ()


def test_tokens_reserve_then_settle_returns_the_difference(limiter: Limiter) -> None:
    limiter.set_limit(Limit(key="llm", tokens=1000, window_s=10))
    big = _admitted(limiter.acquire(["llm"], input_tokens=300, output_tokens=500))
    refusal = _refused(limiter.acquire(["llm"], input_tokens=100, output_tokens=200))
    # The call in flight holds a reservation that shrinks when it settles: look again soon, not
    # when the window ages it out.
    assert refusal.reason == "tokens" and refusal.wait_s == limiter.concurrency_wait_s
    status = limiter.status("llm")
    assert status is not None and status.tokens_in_window == 800  # the refusal left nothing behind
    limiter.settle(big, input_tokens=290, output_tokens=110)  # the call used 400: 400 go back
    status = limiter.status("llm")
    assert status is not None
    assert (status.tokens_in_window, status.input_tokens_in_window, status.output_tokens_in_window) == (
        400, 290, 110,
    )  # fmt: skip
    second = _admitted(limiter.acquire(["llm"], input_tokens=100, output_tokens=200))
    limiter.settle(second, input_tokens=150, output_tokens=450)  # more than reserved: counted
    status = limiter.status("llm")
    assert status is not None and status.tokens_in_window == 1000
    _refused(limiter.acquire(["llm"], input_tokens=1))
    limiter.release(second)  # a failed call gives its whole entry back
    status = limiter.status("llm")
    assert status is not None and status.tokens_in_window == 400


def test_a_reservation_larger_than_the_limit_waits_for_an_empty_window(limiter: Limiter) -> None:
    limiter.set_limit(Limit(key="llm", tokens=100, window_s=0.5))
    small = _admitted(limiter.acquire(["llm"], input_tokens=10))
    limiter.settle(small, input_tokens=10, output_tokens=0)  # settled: only the window frees it
    refusal = _refused(limiter.acquire(["llm"], input_tokens=500))
    assert refusal.reason == "tokens" and 0.3 < refusal.wait_s <= 0.5 + GUARD
    time.sleep(0.52 + GUARD)  # the small entry leaves the window
    _admitted(limiter.acquire(["llm"], input_tokens=500))
    _refused(limiter.acquire(["llm"], input_tokens=1))


def test_input_and_output_tokens_are_limited_apart(limiter: Limiter) -> None:
    limiter.set_limit(Limit(key="claude", input_tokens=1000, output_tokens=100, window_s=10))
    _admitted(limiter.acquire(["claude"], input_tokens=900, output_tokens=50))
    assert _refused(limiter.acquire(["claude"], input_tokens=200, output_tokens=10)).reason == "input_tokens"
    assert _refused(limiter.acquire(["claude"], input_tokens=10, output_tokens=60)).reason == "output_tokens"
    _admitted(limiter.acquire(["claude"], input_tokens=100, output_tokens=50))


def test_concurrency_slots_free_on_settle_and_when_a_lease_lapses(
    client: redis.Redis, limiter: Limiter
) -> None:
    short = Limiter(client, prefix=limiter.prefix, lease_s=0.3)
    short.set_limit(Limit(key="gpu", concurrency=2))
    a = _admitted(short.acquire(["gpu"]))
    _admitted(short.acquire(["gpu"]))  # this holder "dies": it never settles
    refusal = _refused(short.acquire(["gpu"]))
    assert refusal.reason == "concurrency" and 0 < refusal.wait_s <= 0.3
    short.settle(a, input_tokens=0, output_tokens=0)
    c = _admitted(short.acquire(["gpu"]))
    _refused(short.acquire(["gpu"]))
    time.sleep(0.35)  # both leases lapse
    status = short.status("gpu")
    assert status is not None and status.in_flight == 0
    _admitted(short.acquire(["gpu"]))
    short.release(c)  # a lapsed lease is not brought back by its late release


def test_renew_keeps_a_lease(client: redis.Redis, limiter: Limiter) -> None:
    short = Limiter(client, prefix=limiter.prefix, lease_s=0.4)
    short.set_limit(Limit(key="gpu", concurrency=1))
    held = _admitted(short.acquire(["gpu"]))
    for _ in range(4):
        time.sleep(0.2)
        short.renew([held])
    _refused(short.acquire(["gpu"]))  # 0.8 s later: still held
    short.settle(held, input_tokens=0, output_tokens=0)
    _admitted(short.acquire(["gpu"]))


def test_all_or_none_across_keys(limiter: Limiter) -> None:
    limiter.set_limit(Limit(key="first", requests=10, tokens=1000, concurrency=5, window_s=10))
    limiter.set_limit(Limit(key="second", requests=1, window_s=10))
    _admitted(limiter.acquire(["second"]))
    refusal = _refused(limiter.acquire(["first", "second"], input_tokens=100))
    assert refusal.key == "second" and refusal.reason == "requests"
    status = limiter.status("first")
    assert status is not None
    assert (status.requests_in_window, status.tokens_in_window, status.in_flight) == (0, 0, 0)


def test_the_refusal_waits_for_every_limit(limiter: Limiter) -> None:
    limiter.set_limit(Limit(key="short", requests=1, window_s=0.5))
    limiter.set_limit(Limit(key="long", requests=1, window_s=5))
    _admitted(limiter.acquire(["short", "long"]))
    refusal = _refused(limiter.acquire(["short", "long"]))
    assert refusal.key == "long" and 4.5 < refusal.wait_s <= 5 + GUARD


def test_cooldown_refuses_everyone_until_it_ends(client: redis.Redis, limiter: Limiter) -> None:
    limiter.set_limit(Limit(key="openai", requests=100, window_s=1))
    other = Limiter(client, prefix=limiter.prefix)  # another worker
    limiter.cooldown("openai", 0.5)
    limiter.cooldown("openai", 0.1)  # never shortens
    refusal = _refused(other.acquire(["openai"]))
    assert refusal.reason == "cooldown" and 0.4 <= refusal.wait_s <= 0.5 * 1.25 + 0.01
    limiter.cooldown("unconfigured", 0.5)  # a 429 on a key without a limit still cools it down
    assert _refused(other.acquire(["unconfigured"])).reason == "cooldown"
    status = limiter.status("openai")
    assert status is not None and 0.3 < status.cooldown_s <= 0.5
    time.sleep(0.55)
    _admitted(other.acquire(["openai", "unconfigured"]))


def test_observe_headers_remaining_zero_cools_down_until_the_reset(limiter: Limiter) -> None:
    limiter.set_limit(Limit(key="openai", requests=100, window_s=60))
    limiter.observe_headers(
        "openai", {"X-RateLimit-Remaining-Requests": "0", "X-RateLimit-Reset-Requests": "500ms"}
    )
    refusal = _refused(limiter.acquire(["openai"]))
    assert refusal.reason == "cooldown" and 0.4 < refusal.wait_s <= 0.65
    limiter.observe_headers("other", {"retry-after": "1"})
    assert _refused(limiter.acquire(["other"])).reason == "cooldown"


def test_observe_headers_records_what_the_provider_saw_beyond_us(limiter: Limiter) -> None:
    limiter.set_limit(Limit(key="claude", requests=10, input_tokens=1000, window_s=60))
    _admitted(limiter.acquire(["claude"], input_tokens=100))
    reset = (datetime.now(UTC) + timedelta(seconds=0.6)).isoformat()
    headers = {
        "anthropic-ratelimit-requests-remaining": "4",  # our headroom is 9: 5 used elsewhere
        "anthropic-ratelimit-requests-reset": reset,
        "anthropic-ratelimit-input-tokens-remaining": "900",  # agrees with us: no correction
        "anthropic-ratelimit-input-tokens-reset": reset,
    }
    limiter.observe_headers("claude", headers)
    limiter.observe_headers("claude", headers)  # the same news twice counts once
    status = limiter.status("claude")
    assert status is not None
    assert (status.requests_in_window, status.input_tokens_in_window) == (6, 100)
    for _ in range(4):
        _admitted(limiter.acquire(["claude"]))
    refusal = _refused(limiter.acquire(["claude"]))
    assert refusal.reason == "requests" and 0.3 < refusal.wait_s <= 0.7  # the debt lapses at the reset
    time.sleep(refusal.wait_s + 0.05)
    _admitted(limiter.acquire(["claude"]))


def test_concurrent_acquires_never_exceed_the_limit_in_any_window(
    client: redis.Redis, limiter: Limiter
) -> None:
    limit = 25
    limiter.set_limit(Limit(key="hot", requests=limit, window_s=1))
    starts: list[float] = []
    lock = threading.Lock()
    stop = time.monotonic() + 2.5

    def worker() -> None:
        while time.monotonic() < stop:
            result = limiter.acquire(["hot"])
            if isinstance(result, Admission):
                with lock:
                    starts.append(result.admitted_at)
            else:
                time.sleep(min(result.wait_s, 0.02))

    threads = [threading.Thread(target=worker) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    starts.sort()
    assert len(starts) >= 2 * limit  # the window slid at least twice
    # every window (t - 1 s, t] ending at an admission holds at most `limit` admissions
    lo = 0
    for hi, at in enumerate(starts):
        while starts[lo] <= at - 1.0 + 1e-9:
            lo += 1
        assert hi - lo + 1 <= limit, (at, hi - lo + 1)


def test_reset_forgets_the_window_but_not_the_limit(limiter: Limiter) -> None:
    limiter.set_limit(Limit(key="k", requests=1, concurrency=1, window_s=60))
    _admitted(limiter.acquire(["k"]))
    limiter.cooldown("k", 30)
    _refused(limiter.acquire(["k"]))
    limiter.reset("k")
    assert limiter.get_limit("k") is not None
    _admitted(limiter.acquire(["k"]))
