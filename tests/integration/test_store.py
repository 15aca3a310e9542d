"""The job store's scripts on a real Redis: leases, duplicates, the sweeper's view, merge once, slots."""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from typing import Any

import pytest
from redis.crc import key_slot

from fanflow.config import Settings
from fanflow.result import JobResult, JobStatus, OutcomeStatus, SubtaskOutcome
from fanflow.spec import FanOut, PyCall, Subtask
from fanflow.store import MERGE_MEMBER, JobStore

pytestmark = pytest.mark.integration


@pytest.fixture
def store(settings: Settings) -> Iterator[JobStore]:
    url = settings.store_url_value
    assert url is not None
    store = JobStore.from_url(url, prefix=f"{settings.key_prefix}-store-{secrets.token_hex(3)}")
    yield store
    store.client.close()


def _spec(*keys: str, max_concurrency: int | None = None) -> FanOut:
    return FanOut(
        name="store",
        subtasks=[Subtask(key=key, run=PyCall(function="tests.callables:noop")) for key in keys],
        max_concurrency=max_concurrency,
    )


def _begin(store: JobStore, job_id: str, key: str, token: str, *, lease_s: float = 30.0, cap: int = 5,
           limit: int = 0) -> str:  # fmt: skip
    verdict = store.begin_branch(
        job_id, key, 0, token=token, delivery_cap=cap, max_concurrency=limit, lease_s=lease_s
    )
    return verdict.verdict


def _succeeded(key: str, round_: int = 0) -> SubtaskOutcome:
    return SubtaskOutcome(key=key, status=OutcomeStatus.SUCCEEDED, output=key, round=round_)


def test_a_second_delivery_of_a_running_branch_is_a_duplicate(store: JobStore) -> None:
    store.create_job("j1", _spec("a", "b"))
    assert _begin(store, "j1", "a", "t1") == "run"
    assert _begin(store, "j1", "a", "t2") == "running"  # the broker restored it: dropped
    assert store.record_outcome("j1", _succeeded("a"), cancel_on_failure=False, token="t1")
    assert _begin(store, "j1", "a", "t3") == "done"
    meta = store.meta("j1")
    assert meta.done == 1 and meta.status is JobStatus.RUNNING
    deliveries = store.client.hgetall(store.keys("j1").deliveries)
    assert deliveries == {"a:0": "1"}  # the duplicate was not counted as a delivery


def test_a_lapsed_lease_is_swept_and_the_next_delivery_runs(store: JobStore) -> None:
    store.create_job("j2", _spec("a", "b"))
    assert _begin(store, "j2", "a", "dead", lease_s=0.05) == "run"
    time.sleep(0.1)
    report = store.sweep("j2", grace_s=60)
    assert report.state == "active" and report.lapsed == ["a"] and not report.merge
    assert store.sweep("j2", grace_s=60).lapsed == []  # swept once
    assert _begin(store, "j2", "a", "alive") == "run"
    # The dead delivery's late renewal does not steal the lease back.
    assert store.renew_leases("j2", {"a": "dead"}, 30) == ["a"]
    assert store.renew_leases("j2", {"a": "alive"}, 30) == []


def test_renewal_keeps_a_lease_alive(store: JobStore) -> None:
    store.create_job("j3", _spec("a"))
    assert _begin(store, "j3", "a", "t", lease_s=0.3) == "run"
    for _ in range(4):
        time.sleep(0.15)
        assert store.renew_leases("j3", {"a": "t"}, 0.3) == []
    assert store.sweep("j3", grace_s=60).lapsed == []
    assert _begin(store, "j3", "a", "other") == "running"


def test_max_concurrency_counts_live_leases_only(store: JobStore) -> None:
    store.create_job("j4", _spec("a", "b", "c", max_concurrency=2))
    assert _begin(store, "j4", "a", "ta", limit=2, lease_s=0.05) == "run"
    assert _begin(store, "j4", "b", "tb", limit=2) == "run"
    time.sleep(0.1)  # a's worker died: its lease no longer counts
    assert _begin(store, "j4", "c", "tc", limit=2) == "run"
    assert _begin(store, "j4", "a", "ta2", limit=2) == "wait"


def test_suspects_are_reported_only_when_the_job_stalls(store: JobStore) -> None:
    store.create_job("j5", _spec("a", "b"))
    assert store.sweep("j5", grace_s=60).suspects == []
    time.sleep(0.2)
    report = store.sweep("j5", grace_s=0.1)
    assert sorted(report.suspects) == ["a", "b"]
    store.mark_sent("j5", report.suspects)
    assert store.sweep("j5", grace_s=0.1).suspects == []  # checked just now


def test_a_round_merges_once_and_a_finished_round_asks_for_its_merge(store: JobStore) -> None:
    store.create_job("j6", _spec("a"))
    assert _begin(store, "j6", "a", "t") == "run"
    store.record_outcome("j6", _succeeded("a"), cancel_on_failure=False, token="t")
    time.sleep(0.2)
    assert store.sweep("j6", grace_s=0.1).merge  # finished, never merged
    assert store.begin_merge("j6", 0, token="m1", lease_s=30) == "run"
    assert store.begin_merge("j6", 0, token="m2", lease_s=30) == "running"
    result = JobResult(job_id="j6", name="store", status=JobStatus.SUCCEEDED, outcomes=[_succeeded("a")])
    assert store.save_result("j6", result)
    assert not store.save_result("j6", result)
    assert store.begin_merge("j6", 0, token="m3", lease_s=30) == "done"
    assert store.meta("j6").merges == 1
    assert store.sweep("j6", grace_s=0.1).state == "final"
    assert "j6" not in store.active_jobs()  # saving the result took it off the sweeper's list


def test_every_script_touches_one_cluster_slot(store: JobStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each Lua script's KEYS share the job's hash tag (Redis Cluster runs a script on one slot)."""
    seen: list[tuple[str, list[str]]] = []
    for name in ("_begin", "_record", "_start_round", "_begin_merge", "_save_result", "_renew", "_sweep"):
        script = getattr(store, name)

        def spy(*args: Any, _script: Any = script, _name: str = name, **kwargs: Any) -> Any:
            seen.append((_name, list(kwargs.get("keys") or [])))
            return _script(*args, **kwargs)

        monkeypatch.setattr(store, name, spy)
    job = "j7"
    store.create_job(job, _spec("a"))
    _begin(store, job, "a", "t")
    store.renew_leases(job, {"a": "t"}, 30)
    store.sweep(job, grace_s=60)
    store.record_outcome(job, _succeeded("a"), cancel_on_failure=False, token="t")
    store.begin_merge(job, 0, token="m", lease_s=30)
    store.save_result(job, JobResult(job_id=job, name="store", status=JobStatus.FAILED, outcomes=[]))
    store.start_round(job, 1, ["a"])
    assert {name for name, _ in seen} == {
        "_begin", "_record", "_start_round", "_begin_merge", "_save_result", "_renew", "_sweep"
    }  # fmt: skip
    for name, keys in seen:
        assert keys, name
        assert len({key_slot(key.encode()) for key in keys}) == 1, (name, keys)
    assert all(f"{{{job}}}" in key for key in store.keys(job).all())
    assert MERGE_MEMBER == "#merge"


def test_redis_refusing_connections_is_one_clear_error() -> None:
    """maxclients reached: the branch runner says so in one line after its patience, no silent loop."""
    from fanflow.branch import ride_out
    from fanflow.embedded import EmbeddedRedis
    from fanflow.errors import BackendError

    with EmbeddedRedis() as server:
        holder = JobStore.from_url(server.url, max_connections=4)
        holder.client.config_set("maxclients", 1)
        holder.client.ping()  # holds the one allowed connection
        store = JobStore.from_url(server.url, max_connections=4)
        started = time.monotonic()
        with pytest.raises(BackendError, match=r"refused connections \(maxclients reached\)"):
            ride_out(lambda: store.meta("any"), patience_s=1.0, what="read a job")
        assert time.monotonic() - started < 5
        holder.client.close()
