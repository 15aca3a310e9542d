"""Fan-out / fan-in on a real Redis and a real (in-process) Celery worker."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from fanflow import (
    Client,
    FanOut,
    JobNotFoundError,
    JobStatus,
    OutcomeStatus,
    PyCall,
    SpecError,
    Subtask,
)
from fanflow.app import ALL_QUEUES
from fanflow.canvas import round_parts
from tests.callables import calls

pytestmark = pytest.mark.integration

FN = "tests.callables:"


def call(function: str, **kwargs: Any) -> PyCall:
    return PyCall(function=FN + function, kwargs=kwargs)


def branch(key: str, function: str = "echo", *, sub: dict[str, Any] | None = None, **kwargs: Any) -> Subtask:
    return Subtask(key=key, run=call(function, **kwargs), **(sub or {}))


def fanout(*subtasks: Subtask, **fields: Any) -> FanOut:
    return FanOut(name=fields.pop("name", "test"), subtasks=list(subtasks), **fields)


def test_concatenate_keeps_declared_order_when_branches_finish_out_of_order(client: Client) -> None:
    delays = [0.4, 0.0, 0.25, 0.1]
    spec = fanout(*(branch(f"b{i}", value=f"v{i}", delay=d) for i, d in enumerate(delays)))
    result = client.submit(spec).wait(timeout=30)
    assert result.status is JobStatus.SUCCEEDED
    assert result.merged == ["v0", "v1", "v2", "v3"]
    finish_order = sorted(result.outcomes, key=lambda o: o.finished_at or 0)
    assert [o.key for o in finish_order] != ["b0", "b1", "b2", "b3"]  # they really finished out of order
    assert [o.key for o in result.outcomes] == ["b0", "b1", "b2", "b3"]


def test_key_merge_conflict_fails_the_job_naming_the_entity(client: Client) -> None:
    subtasks = [
        branch("left", "entities", items=[{"id": "e1", "color": "red"}, {"id": "e2"}]),
        branch("right", "entities", items=[{"id": "e1", "size": 3}]),
    ]
    failed = client.submit(fanout(*subtasks, merge={"strategy": "key_merge", "field": "id"})).wait(timeout=30)
    assert failed.status is JobStatus.FAILED
    assert failed.error is not None and failed.error.type == "MergeConflictError"
    assert (
        "'e1'" in failed.error.message
        and "'left'" in failed.error.message
        and "'right'" in failed.error.message
    )
    updated = client.submit(
        fanout(*subtasks, merge={"strategy": "key_merge", "field": "id", "on_conflict": "update"})
    ).wait(timeout=30)
    assert updated.merged == {"e1": {"id": "e1", "color": "red", "size": 3}, "e2": {"id": "e2"}}


def test_best_effort_merges_successes_and_flags_failures(client: Client) -> None:
    spec = fanout(
        branch("a", value=1), branch("b", "fail", message="bad input"), branch("c", value=3),
        failure={"policy": "best_effort"},
    )  # fmt: skip
    result = client.submit(spec).wait(timeout=30)
    assert result.status is JobStatus.PARTIAL
    assert result.merged == [1, 3]
    assert result.flagged == ["b"]
    error = result.outcome("b").error
    assert error is not None and (error.type, error.message) == ("RuntimeError", "bad input")


def test_all_or_nothing_cancels_the_siblings_that_have_not_started(client: Client, tmp_path: Path) -> None:
    slow = [
        branch(f"s{i}", "count_calls", counter_dir=str(tmp_path), name=f"s{i}", delay=0.3) for i in range(12)
    ]
    spec = fanout(branch("first", "fail", message="fatal"), *slow, max_concurrency=2)
    result = client.submit(spec).wait(timeout=60)
    assert result.status is JobStatus.FAILED
    assert result.error is not None and result.error.message == "first: fatal"
    assert result.merged is None
    assert len(result.cancelled) >= 8
    assert all(result.outcome(k).status is OutcomeStatus.CANCELLED for k in result.cancelled)
    ran = sum(calls(str(tmp_path), f"s{i}") for i in range(12))
    assert ran + len(result.cancelled) == 12  # a cancelled branch never ran


def test_quorum_needs_its_threshold_and_required_branches(client: Client) -> None:
    subtasks = [branch("a", value=1), branch("b", "fail"), branch("c", value=3, sub={"required": True})]
    met = client.submit(fanout(*subtasks, failure={"policy": "quorum", "min_succeeded": 2})).wait(timeout=30)
    assert (met.status, met.merged, met.flagged) == (JobStatus.PARTIAL, [1, 3], ["b"])
    missed = client.submit(fanout(*subtasks, failure={"policy": "quorum", "min_fraction": 1.0})).wait(
        timeout=30
    )
    assert missed.status is JobStatus.FAILED and missed.error is not None
    assert missed.error.type == "QuorumNotMet"
    required = [branch("a", value=1), branch("b", value=2), branch("c", "fail", sub={"required": True})]
    broken = client.submit(fanout(*required, failure={"policy": "quorum", "min_succeeded": 1})).wait(
        timeout=30
    )
    assert broken.status is JobStatus.FAILED and broken.error is not None
    assert "required branch 'c'" in broken.error.message


def test_retry_failed_reruns_only_the_failures_and_merges_again(client: Client, tmp_path: Path) -> None:
    marker = tmp_path / "ready"
    counter = str(tmp_path)
    spec = fanout(
        branch("ok1", "count_calls", counter_dir=counter, name="ok1", value="one"),
        branch("late", "fail_unless_exists", path=str(marker), value="two"),
        branch("ok2", "count_calls", counter_dir=counter, name="ok2", value="three"),
        failure={"policy": "best_effort"},
    )  # fmt: skip
    handle = client.submit(spec)
    first = handle.wait(timeout=30)
    assert (first.status, first.flagged, first.merged) == (JobStatus.PARTIAL, ["late"], ["one", "three"])
    marker.touch()
    second = handle.retry_failed().wait(timeout=30)
    assert second.status is JobStatus.SUCCEEDED
    assert second.merged == ["one", "two", "three"]
    assert second.round == 1 and second.outcome("late").round == 1 and second.outcome("ok1").round == 0
    assert (calls(counter, "ok1"), calls(counter, "ok2")) == (1, 1)
    assert handle.retry_failed().wait(timeout=5).round == 1  # nothing left to retry: no new round


def test_cancel_stops_branches_not_yet_started(client: Client, tmp_path: Path) -> None:
    counter = str(tmp_path)
    slow = [branch(f"s{i}", "count_calls", counter_dir=counter, name=f"s{i}", delay=0.4) for i in range(8)]
    handle = client.submit(fanout(*slow, max_concurrency=1, failure={"policy": "best_effort"}))
    while handle.progress().done < 1:
        time.sleep(0.05)
    assert handle.cancel() is True
    assert handle.cancel() is False
    result = handle.wait(timeout=30)
    assert result.status is JobStatus.CANCELLED
    assert len(result.cancelled) >= 5
    assert sum(calls(counter, f"s{i}") for i in range(8)) + len(result.cancelled) == 8
    assert handle.retry_failed().wait(timeout=30).status is JobStatus.SUCCEEDED  # cancelled branches re-run


def test_invalid_specs_enqueue_nothing(client: Client) -> None:
    redis = client.store.client
    jobs_before = redis.zcard(f"{client.store.prefix}:jobs")
    queued_before = [redis.llen(q) for q in ALL_QUEUES]
    with pytest.raises(SpecError) as missing_module:
        client.submit(fanout(branch("a"), Subtask(key="b", run=PyCall(function="tests.nowhere:fn"))))
    assert missing_module.value.field == "subtasks.1.run.function"
    with pytest.raises(SpecError, match=r"subtasks\.0\.run\.model: unknown model provider 'a'"):
        client.submit(
            {"name": "x", "subtasks": [{"key": "a", "run": {"kind": "llm", "model": "a:b", "prompt": "p"}}]}
        )
    with pytest.raises(SpecError, match=r"subtasks\.0\.run\.argv\.1: unknown template variable \{nope\}"):
        client.submit(
            {"name": "x", "subtasks": [{"key": "a", "run": {"kind": "agent", "argv": ["echo", "{nope}"]}}]}
        )
    with pytest.raises(SpecError, match="duplicate key"):
        client.submit({"name": "x", "subtasks": [branch("a").model_dump(), branch("a").model_dump()]})
    assert redis.zcard(f"{client.store.prefix}:jobs") == jobs_before
    assert [redis.llen(q) for q in ALL_QUEUES] == queued_before


def test_transient_errors_are_retried_with_backoff(client: Client, tmp_path: Path) -> None:
    retry = {"attempts": 3, "backoff_s": 0.01}
    counter = str(tmp_path)
    spec = fanout(
        branch("flaky", "flaky", counter_dir=counter, name="f", failures=2, value="ok", sub={"retry": retry}),
        branch("hopeless", "fail", kind="ConnectionError", sub={"retry": retry}),
        branch("fatal", "fail", kind="ValueError", sub={"retry": retry}),
        failure={"policy": "best_effort"},
    )  # fmt: skip
    result = client.submit(spec).wait(timeout=30)
    assert (result.outcome("flaky").status, result.outcome("flaky").attempts) == (OutcomeStatus.SUCCEEDED, 3)
    assert result.outcome("hopeless").attempts == 3
    assert result.outcome("fatal").attempts == 1  # ValueError is not in retry_on


def test_timeouts_deadlines_and_bad_outputs_become_failed_outcomes(client: Client) -> None:
    spec = fanout(
        branch("slow", delay=2.0, sub={"timeout_s": 0.2}),
        branch("weird", "not_json"),
        branch("empty", value="", sub={"success": {"not_empty": True}}),
        branch("fine", value="x"),
        failure={"policy": "best_effort"},
    )  # fmt: skip
    result = client.submit(spec).wait(timeout=30)
    errors = {o.key: o.error.type for o in result.outcomes if o.error}
    assert errors == {"slow": "BranchTimeoutError", "weird": "TypeError", "empty": "SuccessCriteriaError"}
    late = client.submit(
        fanout(branch("a", delay=0.5), branch("b", delay=0.5), max_concurrency=1, deadline_s=0.3)
    )
    late_result = late.wait(timeout=30)
    assert late_result.status is JobStatus.FAILED
    assert any(o.error and o.error.type == "DeadlineExceededError" for o in late_result.outcomes)


def test_max_concurrency_holds_across_the_worker(client: Client, tmp_path: Path) -> None:
    spec = fanout(*(branch(f"b{i}", delay=0.2, value=i) for i in range(6)), max_concurrency=2)
    result = client.submit(spec).wait(timeout=30)
    assert result.status is JobStatus.SUCCEEDED
    spans = [(o.started_at or 0, o.finished_at or 0) for o in result.outcomes]
    overlap = max(sum(1 for s, e in spans if s <= t < e) for t, _ in spans)
    assert overlap <= 2


def test_idempotency_key_and_lookup_from_another_client(client: Client, settings: Any) -> None:
    spec = fanout(branch("a", value=1), idempotency_key=f"order-{time.time_ns()}")
    first = client.submit(spec)
    assert client.submit(spec).job_id == first.job_id
    other = Client.from_settings(settings)
    assert other.get(first.job_id).wait(timeout=30).merged == [1]
    with pytest.raises(JobNotFoundError):
        other.get("no-such-job")


def test_a_redelivered_branch_does_not_run_again(client: Client, tmp_path: Path) -> None:
    counter = str(tmp_path)
    handle = client.submit(fanout(branch("a", "count_calls", counter_dir=counter, name="a", value=1)))
    handle.wait(timeout=30)
    # What a broker redelivery looks like to the worker: the same branch message once more.
    client.app.send_task(
        "fanflow.subtask", args=(handle.job_id, "a", 0), queue="fanflow.py", ignore_result=True
    )
    time.sleep(0.5)
    assert calls(counter, "a") == 1
    assert handle.progress().merges == 1
    assert handle.progress().done == 1


def test_malformed_messages_do_not_kill_the_worker(client: Client) -> None:
    with client.app.producer_or_acquire() as producer:
        producer.publish(
            b"\x80\x04not json at all", routing_key="fanflow.py", exchange="",
            content_type="application/x-python-serialize", content_encoding="binary",
            headers={"task": "fanflow.subtask", "id": "bogus-1"},
        )  # fmt: skip
    client.app.send_task("fanflow.subtask", args=("no-such-job",), queue="fanflow.py")  # wrong arity
    client.app.send_task("fanflow.subtask", args=("no-such-job", "k", 0), queue="fanflow.py")  # unknown job
    assert client.submit(fanout(branch("a", value="still alive"))).wait(timeout=30).merged == ["still alive"]


def test_flower_sees_job_and_key_in_the_name_and_never_the_payload(client: Client) -> None:
    secret = "sk-live-do-not-log"
    spec = fanout(branch("alpha", value=secret), name="flower-check")
    handle = client.submit(spec)
    handle.wait(timeout=30)
    (part,) = round_parts(handle.job_id, spec, 0)
    assert part.shadow == "fanflow.subtask[flower-check:alpha]"
    assert part.argsrepr == repr((handle.job_id, "alpha", 0))
    assert secret not in repr(part)


def test_progress_events_and_counters(client: Client) -> None:
    handle = client.submit(
        fanout(branch("a", value=1), branch("b", "fail"), failure={"policy": "best_effort"})
    )
    handle.wait(timeout=30)
    events = client.store.events(handle.job_id, "0-0")
    kinds = [(e["type"], e.get("key"), e.get("status")) for _, e in events]
    assert ("finished", "a", "succeeded") in kinds and ("finished", "b", "failed") in kinds
    assert kinds[-1] == ("job", None, "partial")
    meta = handle.progress()
    assert (meta.size, meta.done, meta.failed, meta.merges) == (2, 2, 1, 1)
    assert meta.first_error == "b: RuntimeError: boom"
