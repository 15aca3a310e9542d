"""Pipelines with separate ``celery worker`` processes at fanflow's default settings.

A worker is SIGKILLed while it runs nodes of a pipeline's fan-out: the nodes it held run again
elsewhere once their leases lapse, every fan-in node runs exactly once (after all of its own
dependencies), and the pipeline's merge runs once.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from fanflow.pipeline import Edge, Pipeline, PipelineNode
from fanflow.result import JobStatus, OutcomeStatus
from fanflow.spec import PyCall
from tests.callables import calls
from tests.e2e.conftest import StartWorker, worker_env
from tests.e2e.test_worker_crash import RECOVERY_BOUND_S, _client, _kill_while_running, _wait

pytestmark = pytest.mark.e2e


def _counted(node_id: str, counter_dir: Path, delay: float) -> PipelineNode:
    kwargs = {"counter_dir": str(counter_dir), "name": node_id, "value": node_id, "delay": delay}
    return PipelineNode(id=node_id, run=PyCall(function="tests.callables:count_calls", kwargs=kwargs))


@pytest.mark.timeout(240)
def test_a_killed_workers_nodes_run_again_and_each_fan_in_fires_once(
    e2e_redis_url: str, key_prefix: str, start_worker: StartWorker, tmp_path: Path
) -> None:
    env = worker_env(e2e_redis_url, key_prefix)
    workers = [start_worker(f"w{index}", env=env, concurrency=4) for index in range(3)]
    for worker in workers:
        worker.wait_ready()
    counter_dir = tmp_path / "calls"
    counter_dir.mkdir()
    middle = [f"m{index:02d}" for index in range(12)]
    pipeline = Pipeline(
        name="pipeline-crash",
        nodes=[
            _counted("root", counter_dir, 0.0),
            *(_counted(node_id, counter_dir, 2.0) for node_id in middle),
            _counted("join_all", counter_dir, 0.1),
            _counted("join_half", counter_dir, 0.1),
            _counted("tail", counter_dir, 0.1),
        ],
        edges=[
            Edge(node="root", children=[Edge(node=node_id) for node_id in middle]),
            Edge(node="join_all", fan_in=[Edge(node=node_id) for node_id in middle]),
            Edge(node="join_half", fan_in=[Edge(node=node_id) for node_id in middle[::2]]),
            Edge(node="tail", fan_in=[Edge(node="join_all"), Edge(node="join_half")]),
        ],
    )
    handle = _client(e2e_redis_url, key_prefix).submit(pipeline)
    time.sleep(0.5)  # the root first: then the victim takes middle nodes
    in_flight = _kill_while_running(workers[0], counter_dir, timeout=30) - {"root"}
    killed_at = time.monotonic()
    result = _wait(handle, RECOVERY_BOUND_S + 30)
    assert result is not None, f"not finished {RECOVERY_BOUND_S + 30}s after the kill: {handle.progress()}"
    assert time.monotonic() - killed_at < RECOVERY_BOUND_S
    assert result.status is JobStatus.SUCCEEDED, result.error
    assert all(o.status is OutcomeStatus.SUCCEEDED for o in result.outcomes)
    assert in_flight, "the killed worker ran no middle node"
    assert all(calls(str(counter_dir), node_id) >= 2 for node_id in in_flight)
    for fan_in in ("join_all", "join_half", "tail"):
        assert calls(str(counter_dir), fan_in) == 1, f"{fan_in} ran more than once"
    by_key = {o.key: o for o in result.outcomes}
    last_middle = max(by_key[node_id].finished_at or 0 for node_id in middle)
    assert (by_key["join_all"].started_at or 0) >= last_middle
    assert handle.progress().merges == 1
    assert result.merged == {"tail": "tail"}
