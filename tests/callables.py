"""Python callables the tests fan out (importable as ``tests.callables:<name>`` by every worker)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from fanflow.errors import RateLimitedError, TransientError


def echo(value: Any = None, delay: float = 0.0) -> Any:
    """Return ``value`` after ``delay`` seconds."""
    if delay:
        time.sleep(delay)
    return value


def noop() -> None:
    """Do nothing (benchmarks)."""


def fail(message: str = "boom", kind: str = "RuntimeError") -> None:
    """Raise ``kind(message)``."""
    errors: dict[str, type[Exception]] = {
        "RuntimeError": RuntimeError, "ValueError": ValueError, "ConnectionError": ConnectionError,
        "TimeoutError": TimeoutError,
    }  # fmt: skip
    raise errors[kind](message)


def count_calls(counter_dir: str, name: str, value: Any = None, delay: float = 0.0) -> Any:
    """Append one line to ``counter_dir/name`` per call (to count executions), then return ``value``."""
    with open(Path(counter_dir) / name, "a", encoding="utf-8") as file:
        file.write(f"{os.getpid()}\n")
    if delay:
        time.sleep(delay)
    return value


def calls(counter_dir: str, name: str) -> int:
    """How often ``count_calls`` ran for ``name``."""
    path = Path(counter_dir) / name
    return len(path.read_text(encoding="utf-8").splitlines()) if path.exists() else 0


def fail_unless_exists(path: str, value: Any = None) -> Any:
    """Fail until the file ``path`` exists (lets a test make a branch succeed on retry)."""
    if not Path(path).exists():
        raise RuntimeError(f"{path} does not exist yet")
    return value


def flaky(counter_dir: str, name: str, failures: int, value: Any = None) -> Any:
    """Raise ``TransientError`` on the first ``failures`` calls, then return ``value``."""
    count_calls(counter_dir, name)
    if calls(counter_dir, name) <= failures:
        raise TransientError("temporarily unavailable", retry_after_s=0.01)
    return value


def entities(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Return the given entity records (key-merge tests)."""
    return items


def not_json() -> Any:
    """Return something JSON cannot carry."""
    return {1, 2, 3}


def join_keys(outcomes: list[Any], context: Any = None, separator: str = "+") -> str:
    """A custom merge: the branch keys joined, prefixed with the context."""
    return f"{context}:" + separator.join(outcome.key for outcome in outcomes)


def counted_merge(outcomes: list[Any], context: Any = None, counter_dir: str = "", delay: float = 0.0) -> Any:
    """A custom merge that counts its runs in ``counter_dir/merge`` and takes ``delay`` seconds."""
    count_calls(counter_dir, "merge", delay=delay)
    return [outcome.key for outcome in outcomes]


def timed_call(record_dir: str, name: str, delay: float = 0.0, value: Any = None) -> Any:
    """Sleep ``delay``, append ``start end pid`` to ``record_dir/name``, then return ``value``."""
    start = time.time()
    if delay:
        time.sleep(delay)
    with open(Path(record_dir) / name, "a", encoding="utf-8") as file:
        file.write(f"{start} {time.time()} {os.getpid()}\n")
    return value


def intervals(record_dir: str) -> list[tuple[float, float]]:
    """Every ``(start, end)`` that ``timed_call`` recorded under ``record_dir``."""
    spans = []
    for path in Path(record_dir).iterdir():
        for line in path.read_text(encoding="utf-8").splitlines():
            start, end = line.split()[:2]
            spans.append((float(start), float(end)))
    return sorted(spans)


def recorded_pids(record_dir: str) -> set[int]:
    """The processes that ran ``timed_call`` under ``record_dir``."""
    return {
        int(line.split()[2])
        for path in Path(record_dir).iterdir()
        for line in path.read_text(encoding="utf-8").splitlines()
    }


def max_overlap(spans: list[tuple[float, float]]) -> int:
    """The most intervals running at one moment."""
    events = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
    running = peak = 0
    for _, step in events:
        running += step
        peak = max(peak, running)
    return peak


def max_starts_in_window(spans: list[tuple[float, float]], window_s: float = 1.0) -> int:
    """The most starts in any sliding window of ``window_s`` seconds."""
    starts = sorted(start for start, _ in spans)
    peak = low = 0
    for high, start in enumerate(starts):
        while start - starts[low] >= window_s:
            low += 1
        peak = max(peak, high - low + 1)
    return peak


def throttled_once(counter_dir: str, name: str, retry_after: float = 0.5, value: Any = None) -> Any:
    """Raise ``RateLimitedError`` on the first call (a provider's 429), then return ``value``."""
    count_calls(counter_dir, name)
    if calls(counter_dir, name) == 1:
        raise RateLimitedError("429 Too Many Requests", retry_after_s=retry_after)
    return value


def stage(name: str, delay: float = 0.0, inputs: dict[str, Any] | None = None, fail: bool = False) -> Any:
    """A pipeline node: sleep ``delay``, then return its name and what it was fed (or raise)."""
    if delay:
        time.sleep(delay)
    if fail:
        raise RuntimeError(f"{name} failed")
    return {"node": name, "inputs": inputs or {}}


def verdict(value: Any) -> Any:
    """A guard node: return ``{"validation": value}`` (anything but a bool makes the guard fail)."""
    return {"validation": value}
