"""Submit-time pacing: places in line given before a big job's messages are queued."""

from __future__ import annotations

import datetime as dt

from fanflow.pacing import plan_pacing, spacing_ms
from fanflow.ratelimit import Limit
from fanflow.spec import FanOut


def _fanout(count: int, limits: list[str], model: str | None = None) -> FanOut:
    run = (
        {"kind": "llm", "model": model, "prompt": "hi"}
        if model
        else {"kind": "python", "function": "tests.callables:echo"}
    )
    return FanOut.model_validate(
        {"name": "big", "subtasks": [{"key": f"b{i}", "run": run, "limits": limits} for i in range(count)]}
    )


def test_a_request_rate_gives_each_branch_its_place_beyond_the_in_slot_wait() -> None:
    limits = {"svc": Limit(key="svc", requests=10, window_s=1.0)}
    spacing = spacing_ms(limits["svc"])
    assert spacing == round(1025 / 10 * 1.02)
    plan = plan_pacing(_fanout(100, ["svc"]), limits.get, in_slot_ms=2000, max_delay_ms=3_600_000)
    assert "b0" not in plan.delays_ms and "b19" not in plan.delays_ms  # the head waits in its thread
    assert plan.delays_ms["b99"] == 99 * spacing
    assert plan.lines_ms == {"svc": 100 * spacing}  # later refusals queue behind the last place
    etas = plan.etas(dt.datetime(2026, 1, 1, tzinfo=dt.UTC))
    assert (
        etas["b99"]
        == (dt.datetime(2026, 1, 1, tzinfo=dt.UTC) + dt.timedelta(milliseconds=99 * spacing)).isoformat()
    )


def test_no_rate_no_places_and_delays_are_capped() -> None:
    assert plan_pacing(_fanout(100, ["pool"]), {"pool": Limit(key="pool", concurrency=3)}.get,
                       in_slot_ms=2000, max_delay_ms=10_000).delays_ms == {}  # fmt: skip
    model = "openai:gpt-4o-mini"  # a model call consumes its model's key
    plan = plan_pacing(_fanout(1000, [], model), {model: Limit(key=model, requests=1, window_s=1.0)}.get,
                       in_slot_ms=2000, max_delay_ms=10_000)  # fmt: skip
    assert max(plan.delays_ms.values()) == 10_000
