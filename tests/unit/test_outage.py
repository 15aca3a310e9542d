"""Riding out a Redis outage: retry briefly with backoff, then one clear ``BackendError``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import redis
from click.testing import CliRunner
from kombu.exceptions import OperationalError

from fanflow import cli
from fanflow.errors import BackendError, JobNotFoundError, JobTimeoutError
from fanflow.outage import OutageGuard, describe_exception, is_outage, redis_endpoint

REFUSED = "Error 111 connecting to 10.0.0.5:6379. Connection refused."


class FakeTime:
    """A clock that only moves when the code under test sleeps."""

    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def guard(fake: FakeTime, grace_s: float = 10.0) -> OutageGuard:
    return OutageGuard(grace_s, "Redis at 10.0.0.5:6379", hint="check it", sleep=fake.sleep, clock=fake.clock)


def failing(times: int, exc: Callable[[], BaseException], value: Any = "ok") -> Callable[[], Any]:
    """A call that raises ``exc()`` ``times`` times, then returns ``value``; counts its calls."""
    calls = {"n": 0}

    def call() -> Any:
        calls["n"] += 1
        if calls["n"] <= times:
            raise exc()
        return value

    call.calls = calls  # type: ignore[attr-defined]
    return call


@pytest.mark.parametrize(
    "error",
    [
        lambda: redis.ConnectionError(REFUSED),
        lambda: redis.TimeoutError("Timeout reading from socket"),
        lambda: redis.BusyLoadingError("Redis is loading the dataset in memory"),
        lambda: OperationalError(REFUSED),
        lambda: ConnectionResetError(104, "Connection reset by peer"),
    ],
    ids=["refused", "timeout", "loading", "kombu", "reset"],
)
def test_an_outage_shorter_than_the_grace_is_ridden_out(error: Callable[[], BaseException]) -> None:
    fake = FakeTime()
    call = failing(4, error)
    assert guard(fake).call(call, "reading job j") == "ok"
    assert call.calls["n"] == 5  # type: ignore[attr-defined]
    assert fake.sleeps == pytest.approx([0.1, 0.2, 0.4, 0.8])  # short backoff, doubling


def test_backoff_is_capped_and_the_outage_ends_in_one_line_backend_error() -> None:
    fake = FakeTime()
    call = failing(10**6, lambda: redis.ConnectionError(REFUSED))
    with pytest.raises(BackendError) as raised:
        guard(fake, grace_s=10).call(call, "job j: reading its progress")
    assert max(fake.sleeps) == pytest.approx(1.0)
    assert sum(fake.sleeps) == pytest.approx(10.0)  # gave up at the grace, not later
    message = str(raised.value)
    assert message == (
        "job j: reading its progress: Redis at 10.0.0.5:6379 unreachable for 10s "
        f"(ConnectionError: {REFUSED}); check it"
    )
    assert "\n" not in message
    assert isinstance(raised.value.__cause__, redis.ConnectionError)
    assert is_outage(raised.value)


def test_a_backend_error_raised_from_an_outage_is_retried() -> None:
    def store_write_failed() -> BackendError:
        try:
            raise redis.ConnectionError(REFUSED)
        except redis.ConnectionError as exc:
            try:
                raise BackendError(f"Redis write failed: {exc}") from exc
            except BackendError as wrapped:
                return wrapped

    fake = FakeTime()
    assert guard(fake).call(failing(2, store_write_failed), "submitting") == "ok"
    assert len(fake.sleeps) == 2


@pytest.mark.parametrize(
    "error",
    [
        lambda: redis.AuthenticationError("invalid username-password pair"),
        lambda: redis.ResponseError("OOM command not allowed"),
        lambda: JobNotFoundError("no job 'x'"),
        lambda: JobTimeoutError("did not finish"),
        lambda: BackendError("the job store's Redis answered garbage"),
        lambda: ValueError("bad"),
    ],
    ids=["auth", "response", "not-found", "job-timeout", "backend-no-cause", "value"],
)
def test_what_is_not_an_outage_fails_at_once_unchanged(error: Callable[[], BaseException]) -> None:
    fake = FakeTime()
    call = failing(1, error)
    with pytest.raises(type(error())):
        guard(fake).call(call, "reading")
    assert call.calls["n"] == 1  # type: ignore[attr-defined]
    assert fake.sleeps == []


def test_a_kombu_error_caused_by_a_wrong_password_is_not_an_outage() -> None:
    try:
        try:
            raise redis.AuthenticationError("invalid password")
        except redis.AuthenticationError as exc:
            raise OperationalError(str(exc)) from exc
    except OperationalError as exc:
        assert not is_outage(exc)


def test_until_cuts_the_grace_short_and_grace_zero_tries_once() -> None:
    fake = FakeTime()
    with pytest.raises(BackendError, match="unreachable for 2s"):
        guard(fake, grace_s=10).call(
            failing(10**6, lambda: redis.ConnectionError(REFUSED)), "waiting", until=fake.now + 2
        )
    assert sum(fake.sleeps) == pytest.approx(2.0)

    fake = FakeTime()
    call = failing(10**6, lambda: redis.ConnectionError(REFUSED))
    with pytest.raises(BackendError) as raised:
        guard(fake, grace_s=0).call(call, "reading")
    assert call.calls["n"] == 1  # type: ignore[attr-defined]
    assert "unreachable (" in str(raised.value)  # no "for 0s"


def test_give_up_runs_once_and_its_note_comes_before_the_hint() -> None:
    fake = FakeTime()
    notes: list[str] = []

    def give_up() -> str:
        notes.append("called")
        return "nothing was submitted"

    with pytest.raises(BackendError) as raised:
        guard(fake, grace_s=1).call(
            failing(10**6, lambda: redis.ConnectionError(REFUSED)),
            "enqueuing job j",
            where="the broker at b:6379",
            hint="check the broker",
            give_up=give_up,
        )
    assert notes == ["called"]
    assert str(raised.value).startswith("enqueuing job j: the broker at b:6379 unreachable for 1s")
    assert str(raised.value).endswith("; nothing was submitted; check the broker")


@pytest.mark.parametrize(
    ("url", "endpoint"),
    [
        ("redis://:s3cret@redis-host:6380/0", "redis-host:6380"),
        ("redis://user:s3cret@redis-host/2", "redis-host:6379"),
        ("rediss://:s3cret@10.1.2.3:6390", "10.1.2.3:6390"),
        ("redis://[::1]:7000/0", "[::1]:7000"),
        ("unix:///run/redis.sock?password=s3cret", "/run/redis.sock"),
        ("amqp://guest:s3cret@rabbit:5672//", "rabbit:5672"),
        (None, "(not configured)"),
    ],
)
def test_endpoints_never_show_a_password(url: str | None, endpoint: str) -> None:
    assert redis_endpoint(url) == endpoint


def test_describe_exception_masks_credentials_and_folds_lines() -> None:
    exc = OperationalError("cannot reach\n redis://:s3cret@host:6379/0  now")
    assert describe_exception(exc) == "OperationalError: cannot reach redis://***@host:6379/0 now"
    try:
        try:
            raise redis.ConnectionError(REFUSED)
        except redis.ConnectionError as inner:
            raise OperationalError(str(inner)) from inner
    except OperationalError as outer:
        assert describe_exception(outer) == f"ConnectionError: {REFUSED}"  # the Redis client's own


class _Unreachable:
    """Stands in for a Client whose Redis is gone and whose error slipped past the guard."""

    def get(self, job_id: str) -> Any:
        raise redis.ConnectionError(REFUSED)


def test_the_cli_turns_a_stray_redis_error_into_one_line_and_exit_1(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(cli, "_client", lambda settings: _Unreachable())
    monkeypatch.setenv("FANFLOW_BROKER_URL", "redis://:s3cret@10.0.0.5:6379/0")
    done = CliRunner().invoke(cli.main, ["status", "some-job"])
    assert done.exit_code == 1
    assert done.output.strip().splitlines() == [
        f"error: Redis or the broker is unreachable: ConnectionError: {REFUSED}"
    ]
    assert "s3cret" not in done.output
