"""Specs the tests build again and again."""

from __future__ import annotations

from pathlib import Path

from fanflow.spec import FanOut, PyCall, Subtask


def timed_fanout(
    record_dir: Path, count: int, limit_key: str, delay: float, *, name: str = "limited"
) -> FanOut:
    """``count`` branches of ``tests.callables:timed_call`` recording under ``record_dir``, each
    consuming the shared limit ``limit_key``."""
    return FanOut(
        name=name,
        subtasks=[
            Subtask(
                key=f"b{index:03d}",
                run=PyCall(
                    function="tests.callables:timed_call",
                    kwargs={"record_dir": str(record_dir), "name": f"b{index:03d}", "delay": delay},
                ),
                limits=[limit_key],
            )
            for index in range(count)
        ],
    )


def throttled_fanout(counter_dir: Path, limit_key: str, retry_after: float) -> FanOut:
    """One branch consuming ``limit_key`` whose first call answers 429 (``RateLimitedError``)."""
    return FanOut(
        name="throttled",
        subtasks=[
            Subtask(
                key="t",
                run=PyCall(
                    function="tests.callables:throttled_once",
                    kwargs={
                        "counter_dir": str(counter_dir),
                        "name": "t",
                        "retry_after": retry_after,
                        "value": "ok",
                    },
                ),
                limits=[limit_key],
            )
        ],
    )
