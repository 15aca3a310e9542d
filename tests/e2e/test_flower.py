"""Flower, as an operator sees it: fanflow's tasks under readable names, ids and keys, no payloads."""

from __future__ import annotations

import base64
import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fanflow import Client, FanOut, PyCall, Settings, Subtask
from tests.e2e.conftest import REPO_ROOT, StartWorker, worker_env

pytestmark = pytest.mark.e2e

SECRET = "sk-live-0123456789abcdef"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _get(url: str, auth: str | None = None) -> tuple[int, Any]:
    request = urllib.request.Request(url)
    if auth:
        request.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            body = response.read()
            is_json = response.headers.get_content_type() == "application/json"
            return response.status, json.loads(body) if is_json else body.decode()
    except urllib.error.HTTPError as error:
        return error.code, None


@pytest.fixture
def flower(e2e_redis_url: str, key_prefix: str, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """A Flower on a free loopback port with basic auth; yields (base URL, "user:password")."""
    port = _free_port()
    auth = "operator:flower-test-password"
    env = worker_env(e2e_redis_url, key_prefix) | {"FLOWER_BASIC_AUTH": auth}
    log = (tmp_path / "flower.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "workers", "flower", f"--port={port}", "--address=127.0.0.1"],
        cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if _get(f"{base}/healthcheck")[0] == 200:
                    break
            except OSError:
                time.sleep(0.2)
        else:
            raise RuntimeError("flower did not start: " + (tmp_path / "flower.log").read_text())
        yield base, auth
    finally:
        process.terminate()
        process.wait(timeout=15)
        log.close()


def _flower_tasks(base: str, auth: str, expected: int, timeout: float = 30) -> dict[str, Any]:
    """Flower's task list once it shows ``expected`` fanflow tasks in a final state."""
    tasks: dict[str, Any] = {}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, tasks = _get(f"{base}/api/tasks", auth)
        assert status == 200
        final = [t for t in tasks.values() if t.get("state") in ("SUCCESS", "FAILURE")]
        if len(final) >= expected:
            break
        time.sleep(0.5)
    return tasks


def test_flower_tells_which_branch_failed_and_shows_no_payload(
    flower: tuple[str, str], e2e_redis_url: str, key_prefix: str, start_worker: StartWorker
) -> None:
    """A best-effort job with one failing branch, as an operator sees it in Flower's API."""
    base, auth = flower
    assert _get(f"{base}/api/tasks")[0] == 401  # the API needs the password
    worker = start_worker("flowerw", env=worker_env(e2e_redis_url, key_prefix))
    worker.wait_ready()
    time.sleep(1.0)  # let Flower's event consumer see the worker come online
    client = Client.from_settings(Settings(key_prefix=key_prefix).with_redis(e2e_redis_url))
    spec = FanOut(
        name="flower-demo",
        subtasks=[
            *(
                Subtask(key=key, run=PyCall(function="tests.callables:echo", kwargs={"value": SECRET}))
                for key in ("economic", "social")
            ),
            Subtask(
                key="legal",
                run=PyCall(function="tests.callables:fail", kwargs={"message": "statute not found"}),
            ),
        ],
        failure={"policy": "best_effort"},
    )
    handle = client.submit(spec)
    result = handle.wait(timeout=60)
    assert result.status.value == "partial"
    assert handle.progress().merges == 1

    tasks = _flower_tasks(base, auth, expected=4)
    rows = {t["uuid"]: t for t in tasks.values()}
    branches = {t["name"]: t for t in rows.values() if str(t.get("name", "")).startswith("fanflow.subtask")}
    merges = [t for t in rows.values() if str(t.get("name", "")).startswith("fanflow.merge")]
    assert set(branches) == {
        "fanflow.subtask[flower-demo:economic]", "fanflow.subtask[flower-demo:social]",
        "fanflow.subtask[flower-demo:legal]",
    }, sorted(branches)  # fmt: skip
    failed = branches["fanflow.subtask[flower-demo:legal]"]
    assert failed["state"] == "FAILURE"
    assert "RuntimeError: statute not found" in str(failed.get("exception")), failed
    for key in ("economic", "social"):
        assert branches[f"fanflow.subtask[flower-demo:{key}]"]["state"] == "SUCCESS"
    for row in branches.values():
        assert handle.job_id in str(row.get("args")), row  # the real arguments: job id, key, round
        assert row.get("kwargs") in ("{}", None, ""), row
    assert len(merges) == 1 and merges[0]["state"] == "SUCCESS", merges
    # Flower's "Failed" filter finds the failed branch and only it.
    status, failures = _get(f"{base}/api/tasks?state=FAILURE", auth)
    assert status == 200
    assert [t["name"] for t in failures.values()] == ["fanflow.subtask[flower-demo:legal]"]
    assert SECRET not in json.dumps(tasks)


def test_flower_shows_each_branch_of_a_batched_fan_out_of_model_calls(
    flower: tuple[str, str], e2e_redis_url: str, key_prefix: str, start_worker: StartWorker
) -> None:
    """A fan-out big enough to go in batches (fanflow.batching): Flower still lists a task per branch
    under its own name and id, with the failed one failed, beside the batch tasks themselves."""
    from fanflow.batching import MIN_BRANCHES
    from fanflow.canvas import branch_task_id
    from fanflow.dev.fake_llm import FakeLLM

    base, auth = flower
    with FakeLLM() as server:
        env = worker_env(e2e_redis_url, key_prefix) | {
            "OPENAI_BASE_URL": f"{server.url}/v1", "OPENAI_API_KEY": SECRET,
        }  # fmt: skip
        start_worker("llmw", env=env, queues="fanflow.llm,fanflow.control", concurrency=64).wait_ready()
        time.sleep(1.0)
        client = Client.from_settings(Settings(key_prefix=key_prefix).with_redis(e2e_redis_url))
        keys = [f"q{index:03d}" for index in range(MIN_BRANCHES)]
        subtasks: list[dict[str, Any]] = [
            {"key": key, "run": {"kind": "llm", "model": "openai:gpt-4o-mini", "prompt": f"Question {key}",
                                 "max_tokens": 16}}
            for key in keys
        ]  # fmt: skip
        # q007's answer misses its schema's required field: it fails (one attempt), its batch too.
        subtasks[7]["run"]["output_schema"] = {"type": "object", "required": ["nope"]}
        subtasks[7]["run"]["prompt"] += ' [[fake:json={"other": 1}]]'
        spec = FanOut.model_validate(
            {"name": "batched", "subtasks": subtasks, "failure": {"policy": "best_effort"}}
        )
        handle = client.submit(spec)
        assert handle.wait(timeout=60).status.value == "partial"
    tasks = _flower_tasks(base, auth, expected=MIN_BRANCHES + 1)
    rows = {t["uuid"]: t for t in tasks.values()}
    for key in keys:
        row = rows.get(branch_task_id(handle.job_id, 0, key))
        assert row is not None, key
        assert row["name"] == f"fanflow.subtask[batched:{key}]"
        assert row["state"] == ("FAILURE" if key == "q007" else "SUCCESS"), row
    assert "OutputValidationError" in str(rows[branch_task_id(handle.job_id, 0, "q007")].get("exception"))
    assert any(str(t.get("name", "")).startswith("fanflow.batch[batched:") for t in rows.values())
    assert SECRET not in json.dumps(tasks)
