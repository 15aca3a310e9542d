"""Which fan-outs go in batches of model calls, and how they are cut."""

from __future__ import annotations

from typing import Any

from fanflow.batching import MIN_BRANCHES, batch_plan, batches_of
from fanflow.spec import FanOut


def _fanout(size: int, kind: str = "llm", **extra: Any) -> FanOut:
    run: dict[str, Any] = (
        {"kind": "llm", "model": "openai:gpt-4o-mini", "prompt": "q"}
        if kind == "llm" else {"kind": "python", "function": "tests.callables:noop"}
    )  # fmt: skip
    subtasks = [{"key": f"k{index:04d}", "run": run} for index in range(size)]
    return FanOut.model_validate({"name": "b", "subtasks": subtasks, **extra})


def test_a_big_fan_out_of_model_calls_is_cut_in_order() -> None:
    plan = batch_plan(_fanout(MIN_BRANCHES + 1), 25, paced=False)
    assert plan is not None
    assert [len(batch) for batch in plan] == [25, 25, 25, 25, 1]
    assert [key for batch in plan for key in batch] == [f"k{index:04d}" for index in range(MIN_BRANCHES + 1)]


def test_what_is_not_batched() -> None:
    assert batch_plan(_fanout(MIN_BRANCHES - 1), 25, paced=False) is None  # small
    assert batch_plan(_fanout(MIN_BRANCHES, kind="python"), 25, paced=False) is None  # not model calls
    assert batch_plan(_fanout(MIN_BRANCHES), 25, paced=True) is None  # its limits pace it at submit
    assert batch_plan(_fanout(MIN_BRANCHES, max_concurrency=10), 25, paced=False) is None
    assert batch_plan(_fanout(MIN_BRANCHES), 0, paced=False) is None  # FANFLOW_BATCH_SIZE=0


def test_batches_are_stable() -> None:
    keys = [f"k{index}" for index in range(7)]
    assert batches_of(keys, 3) == [["k0", "k1", "k2"], ["k3", "k4", "k5"], ["k6"]]
    assert batches_of(keys, 3) == batches_of(list(keys), 3)
