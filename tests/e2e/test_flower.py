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
    env = worker_env(e2e_redis_url, key_prefix, 60) | {"FLOWER_BASIC_AUTH": auth}
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


def test_flower_shows_fanflow_tasks_with_ids_keys_and_no_payload(
    flower: tuple[str, str], e2e_redis_url: str, key_prefix: str, start_worker: StartWorker
) -> None:
    base, auth = flower
    assert _get(f"{base}/api/tasks")[0] == 401  # the API needs the password
    worker = start_worker("flowerw", env=worker_env(e2e_redis_url, key_prefix, 60))
    worker.wait_ready()
    time.sleep(1.0)  # let Flower's event consumer see the worker come online
    client = Client.from_settings(
        Settings(key_prefix=key_prefix, visibility_timeout_s=60).with_redis(e2e_redis_url)
    )
    spec = FanOut(
        name="flower-demo",
        subtasks=[
            Subtask(key=key, run=PyCall(function="tests.callables:echo", kwargs={"value": SECRET}))
            for key in ("economic", "social")
        ],
    )
    handle = client.submit(spec)
    assert handle.wait(timeout=60).status.value == "succeeded"

    tasks: dict[str, Any] = {}
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        status, tasks = _get(f"{base}/api/tasks", auth)
        assert status == 200
        names = [t.get("name") for t in tasks.values()]
        if names.count("fanflow.subtask") == 2 and "fanflow.merge" in names:
            break
        time.sleep(0.5)
    branches = [t for t in tasks.values() if t.get("name") == "fanflow.subtask"]
    assert len(branches) == 2, tasks
    shown = " ".join(f"{t.get('args')} {t.get('kwargs')}" for t in branches)
    assert handle.job_id in shown and "key=economic" in shown and "key=social" in shown
    assert "flower-demo" in shown
    assert SECRET not in json.dumps(tasks)
    assert all(t.get("state") == "SUCCESS" for t in branches)
