"""Reading OpenAI's and Anthropic's rate-limit headers."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from fanflow.ratelimit import ProviderWindow, parse_duration, parse_headers


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("6m0s", 360.0),
        ("1s", 1.0),
        ("250ms", 0.25),
        ("12ms", 0.012),
        ("1m30.5s", 90.5),
        ("1h2m3s", 3723.0),
        ("0.5s", 0.5),
        ("2", 2.0),
        ("17.3", 17.3),
    ],
)
def test_openai_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "soon", "5x", "1s2", "m", "-1s", "inf", "nan", "1s 2s"])
def test_bad_durations_are_none(text: str) -> None:
    assert parse_duration(text) is None


def test_openai_headers_in_any_case() -> None:
    parsed = parse_headers(
        {
            "X-RateLimit-Limit-Requests": "500",
            "X-RateLimit-Remaining-Requests": "499",
            "X-RateLimit-Reset-Requests": "120ms",
            "x-ratelimit-limit-tokens": "200000",
            "x-ratelimit-remaining-tokens": "199950",
            "x-ratelimit-reset-tokens": "1m30.5s",
            "content-type": "application/json",
        }
    )
    requests = parsed.windows["requests"]
    assert (requests.limit, requests.remaining, requests.reset_at) == (500, 499, None)
    assert requests.reset_after_s == pytest.approx(0.12)
    assert parsed.windows["tokens"] == ProviderWindow(limit=200_000, remaining=199_950, reset_after_s=90.5)
    assert set(parsed.windows) == {"requests", "tokens"}
    assert parsed.retry_after_s is None


def test_anthropic_headers_with_rfc3339_resets() -> None:
    parsed = parse_headers(
        {
            "anthropic-ratelimit-requests-limit": "50",
            "anthropic-ratelimit-requests-remaining": "0",
            "anthropic-ratelimit-requests-reset": "2025-01-01T00:00:30Z",
            "anthropic-ratelimit-input-tokens-limit": "40000",
            "anthropic-ratelimit-input-tokens-remaining": "39000",
            "anthropic-ratelimit-input-tokens-reset": "2025-01-01T00:00:01.500+00:00",
            "anthropic-ratelimit-output-tokens-remaining": "8000",
            "anthropic-ratelimit-tokens-reset": "not a time",
            "retry-after": "7",
        }
    )
    start = datetime(2025, 1, 1, tzinfo=UTC).timestamp()
    assert parsed.windows["requests"] == ProviderWindow(limit=50, remaining=0, reset_at=start + 30)
    assert parsed.windows["input_tokens"] == ProviderWindow(
        limit=40_000, remaining=39_000, reset_at=start + 1.5
    )
    assert parsed.windows["output_tokens"] == ProviderWindow(remaining=8000)
    assert "tokens" not in parsed.windows  # only an unreadable reset
    assert parsed.retry_after_s == 7.0


def test_retry_after_forms() -> None:
    assert parse_headers({"retry-after-ms": "1500", "retry-after": "9"}).retry_after_s == 1.5
    assert parse_headers({"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}).retry_after_s == 0.0  # past
    assert parse_headers({"retry-after": "whenever"}).retry_after_s is None
    assert parse_headers({}).windows == {}
