"""The merge runs exactly once per round, whatever happens to the worker running it.

- Killed after the merge saved its result but before its message was acknowledged: the broker
  delivers the merge again (after a short visibility timeout, to keep the test short), and the
  second delivery finds the round merged and does nothing.
- A merge that runs longer than the visibility timeout: the broker restores its message while it
  runs; the copy finds the merge's lease held (renewed by the heartbeat) and is dropped.
Both count runs of a custom merge and read ``merges`` from the job meta.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from fanflow.client import Client
from fanflow.config import Settings
from fanflow.result import JobStatus
from fanflow.spec import CustomMerge, FanOut, PyCall, Subtask
from tests.callables import calls
from tests.crash_hooks import CRASH_VARIABLE
from tests.e2e.conftest import StartWorker, worker_env

pytestmark = pytest.mark.e2e


def _spec(counter_dir: Path, delay: float) -> FanOut:
    return FanOut(
        name="merge-once",
        subtasks=[
            Subtask(key=f"k{index}", run=PyCall(function="tests.callables:echo", kwargs={"value": index}))
            for index in range(4)
        ],
        merge=CustomMerge(
            function="tests.callables:counted_merge",
            options={"counter_dir": str(counter_dir), "delay": delay},
        ),
    )


@pytest.mark.timeout(180)
def test_a_merge_killed_after_saving_is_not_merged_again(
    e2e_redis_url: str, key_prefix: str, start_worker: StartWorker, tmp_path: Path
) -> None:
    visibility = 15
    env = worker_env(e2e_redis_url, key_prefix, visibility)
    branches = start_worker("branches", env=env, queues="fanflow.py")
    doomed = start_worker(
        "doomed", env=env | {CRASH_VARIABLE: "after-merge"}, queues="fanflow.control",
        extra_args=("--include", "tests.crash_hooks"),
    )  # fmt: skip
    branches.wait_ready()
    doomed.wait_ready()
    counter_dir = tmp_path / "calls"
    counter_dir.mkdir()
    settings = Settings(key_prefix=key_prefix, visibility_timeout_s=visibility).with_redis(e2e_redis_url)
    handle = Client.from_settings(settings).submit(_spec(counter_dir, 0.0))
    result = handle.wait(timeout=60)
    assert result.status is JobStatus.SUCCEEDED
    doomed.process.wait(timeout=30)  # it killed itself after saving
    assert doomed.process.returncode != 0

    survivor = start_worker("survivor", env=env, queues="fanflow.control")
    survivor.wait_ready()
    deadline = time.monotonic() + visibility + 60
    while time.monotonic() < deadline and not re.search(
        r"fanflow\.merge\[.*\] succeeded.*'done'", survivor.log()
    ):
        time.sleep(0.5)
    assert re.search(r"fanflow\.merge\[.*\] succeeded.*'done'", survivor.log()), (
        "the merge was not redelivered"
    )
    assert calls(str(counter_dir), "merge") == 1
    assert handle.progress().merges == 1


@pytest.mark.timeout(180)
def test_a_merge_outliving_the_visibility_timeout_runs_once(
    e2e_redis_url: str, key_prefix: str, start_worker: StartWorker, tmp_path: Path
) -> None:
    visibility = 10
    env = worker_env(e2e_redis_url, key_prefix, visibility)
    for name in ("a", "b"):
        start_worker(name, env=env).wait_ready()
    counter_dir = tmp_path / "calls"
    counter_dir.mkdir()
    settings = Settings(key_prefix=key_prefix, visibility_timeout_s=visibility).with_redis(e2e_redis_url)
    handle = Client.from_settings(settings).submit(_spec(counter_dir, 3.0 * visibility))
    result = handle.wait(timeout=120)
    assert result.status is JobStatus.SUCCEEDED
    assert result.merged == ["k0", "k1", "k2", "k3"]
    assert calls(str(counter_dir), "merge") == 1
    assert handle.progress().merges == 1
