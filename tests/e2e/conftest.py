"""End-to-end fixtures: a private Redis per module and real ``celery worker`` processes on it.

The e2e tests do not share the session Redis of the integration tests: an in-process worker of
those tests would consume the same queues and run branches the e2e test means to crash.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import IO

import pytest

from fanflow.embedded import EmbeddedRedis

REPO_ROOT = Path(__file__).resolve().parents[2]

#: The workers started for the running test, so a failure report can show their logs.
WORKERS_KEY = pytest.StashKey[list["WorkerProcess"]]()

_LOG_TAIL_CHARS = 20_000
_URL_PASSWORD = re.compile(r"(redis://[^:@/]*:)[^@]*@")


class WorkerProcess:
    """One ``celery -A workers worker`` process in its own session, logging to a file."""

    def __init__(
        self,
        name: str,
        *,
        env: dict[str, str],
        log_path: Path,
        queues: str,
        concurrency: int,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self.name = name
        self.log_path = log_path
        argv = [
            sys.executable, "-m", "celery", "-A", "workers", "worker", "-Q", queues, "-P", "threads",
            "-c", str(concurrency), "--loglevel", "INFO", "-n", f"{name}@%h", "--without-mingle",
            "--without-gossip", *extra_args,
        ]  # fmt: skip
        self._spawn(argv, env)

    def _spawn(self, argv: list[str], env: dict[str, str]) -> None:
        self._log: IO[bytes] = self.log_path.open("wb")
        try:
            # A session of its own: killpg reaches the worker and anything it started, nothing else.
            self.process = subprocess.Popen(
                argv, cwd=REPO_ROOT, env=env, stdin=subprocess.DEVNULL, stdout=self._log,
                stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        except BaseException:
            self._log.close()
            raise

    @property
    def pid(self) -> int:
        """Process id of the worker (its threads pool runs every task in this process)."""
        return self.process.pid

    def log(self) -> str:
        """Everything the worker has logged so far."""
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Block until the worker logs that it consumes.

        Raises:
            RuntimeError: it exited or did not become ready in time.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"worker {self.name} exited with {self.process.returncode} before it was ready"
                )
            if re.search(r"@\S+ ready\.", self.log()):
                return
            time.sleep(0.1)
        raise RuntimeError(f"worker {self.name} was not ready within {timeout}s")

    def kill(self) -> None:
        """SIGKILL the worker's whole process group (no warm or cold shutdown) and reap it."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self, timeout: float = 15.0) -> None:
        """Terminate the worker, kill it if it does not exit in time, close its log."""
        try:
            if self.process.poll() is None:
                self.process.terminate()
                try:
                    self.process.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    self.kill()
        finally:
            self._log.close()


def worker_env(broker_url: str, key_prefix: str, visibility_timeout_s: int | None = None) -> dict[str, str]:
    """The environment of a worker process: this one without ``FANFLOW_*``, plus the test's settings.

    ``visibility_timeout_s=None`` keeps fanflow's default (what users run).
    """
    env = {name: value for name, value in os.environ.items() if not name.startswith("FANFLOW_")}
    python_path = [str(REPO_ROOT), *filter(None, [env.get("PYTHONPATH")])]
    env.update(
        FANFLOW_BROKER_URL=broker_url,
        FANFLOW_KEY_PREFIX=key_prefix,
        PYTHONPATH=os.pathsep.join(python_path),
        PYTHONUNBUFFERED="1",
    )
    if visibility_timeout_s is not None:
        env["FANFLOW_VISIBILITY_TIMEOUT_S"] = str(visibility_timeout_s)
    return env


def run_cli(
    *args: str, env: dict[str, str] | None = None, cwd: Path = REPO_ROOT, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """``python -m fanflow.cli ARGS`` with this environment less ``FANFLOW_*``, plus ``env``."""
    clean = {name: value for name, value in os.environ.items() if not name.startswith("FANFLOW_")}
    return subprocess.run(
        [sys.executable, "-m", "fanflow.cli", *args],
        cwd=cwd, env=clean | (env or {}), capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


@pytest.fixture(scope="module")
def e2e_redis_url() -> Iterator[str]:
    """URL of a redis-server private to this test module."""
    with EmbeddedRedis() as server:
        yield server.url


@pytest.fixture
def key_prefix() -> str:
    """A key prefix of this test's own."""
    return f"fanflow-e2e-{secrets.token_hex(4)}"


StartWorker = Callable[..., WorkerProcess]


@pytest.fixture
def start_worker(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StartWorker]:
    """Start ``celery worker`` processes: ``start_worker(name, env=..., queues=..., concurrency=...)``.

    Every worker started is terminated (then killed) when the test ends; a failing test's report
    gets a section with each worker's log.
    """
    started: list[WorkerProcess] = []
    request.node.stash[WORKERS_KEY] = started

    def start(name: str, *, env: dict[str, str], queues: str = "fanflow.py,fanflow.control",
              concurrency: int = 4, extra_args: tuple[str, ...] = ()) -> WorkerProcess:  # fmt: skip
        worker = WorkerProcess(
            name, env=env, log_path=tmp_path / f"worker-{name}.log", queues=queues, concurrency=concurrency,
            extra_args=extra_args,
        )  # fmt: skip
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.stop()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Attach the workers' logs to the report of a failed setup or test call."""
    report = yield
    workers = item.stash.get(WORKERS_KEY, [])
    if report.failed and report.when in ("setup", "call"):
        for worker in workers:
            text = _URL_PASSWORD.sub(r"\1***@", worker.log())
            report.sections.append((f"worker {worker.name} log (last {_LOG_TAIL_CHARS} chars)",
                                    text[-_LOG_TAIL_CHARS:]))  # fmt: skip
    return report
