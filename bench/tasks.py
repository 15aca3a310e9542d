"""The benchmark's work: a no-op for fanflow's ``PyCall`` and the plain Celery tasks of the baseline.

No side effects at import: producers import this module to check ``PyCall`` import paths, and the
worker entry (``bench.apps``) imports it to register the plain tasks next to fanflow's.
"""

from __future__ import annotations

import ssl
import threading
import time
from typing import Any

import httpx
from celery import Celery, Task

from fanflow.app import CONTROL_QUEUE, QUEUES

__all__ = [
    "COLLECT_TASK", "LLM_CALL_TASK", "LLM_COLLECT_TASK", "NOOP_PATH", "NOOP_TASK", "PY_QUEUE",
    "SLEEP_PATH", "SLEEP_TASK", "STAMP_PATH", "STAMP_QUEUE", "llm_http", "noop", "register_plain_llm_tasks",
    "register_plain_sleep_task", "register_plain_tasks", "register_rate_task", "sleep", "stamp",
]  # fmt: skip

#: The queue both systems' branches go to, and fanflow's merges and the plain chord body go to.
PY_QUEUE = QUEUES["python"]
NOOP_TASK = "bench.noop"
COLLECT_TASK = "bench.collect"
#: Import path of ``noop`` for fanflow's ``PyCall``.
NOOP_PATH = f"{__name__}:noop"


#: The queue of the rate-limit comparison's plain Celery task.
STAMP_QUEUE = "bench.rate"
#: Rate of ``bench.stamp`` (Celery's ``rate_limit``: per worker instance).
STAMP_RATE_ENV = "BENCH_STAMP_RATE"
#: Import path of ``stamp`` for fanflow's ``PyCall``.
STAMP_PATH = f"{__name__}:stamp"


#: Import path of ``sleep`` for fanflow's ``PyCall`` (``bench.dag_makespan``'s nodes).
SLEEP_PATH = f"{__name__}:sleep"
#: The plain Celery task of ``bench.dag_makespan``'s level-by-level scheduler.
SLEEP_TASK = "bench.sleep"


def noop() -> None:
    """Do nothing: each branch then costs exactly its framework's overhead."""


def sleep(seconds: float) -> list[float]:
    """Sleep ``seconds``; return ``[started, finished]`` (``time.time()`` seconds)."""
    started = time.time()
    time.sleep(seconds)
    return [started, time.time()]


def stamp(path: str) -> None:
    """Append this call's start time to ``path`` (one small append: atomic across processes)."""
    with open(path, "a", encoding="utf-8") as file:
        file.write(f"{time.time()!r}\n")


def register_rate_task(app: Celery, rate: str) -> Task[Any, Any]:
    """Register ``bench.stamp`` with Celery's own ``rate_limit`` (e.g. ``"10/s"``)."""

    @app.task(name="bench.stamp", queue=STAMP_QUEUE, rate_limit=rate, ignore_result=True, shared=False)
    def plain_stamp(path: str) -> None:
        """The baseline's rate-limited task."""
        stamp(path)

    return plain_stamp


def register_plain_tasks(app: Celery) -> tuple[Task[Any, Any], Task[Any, Any]]:
    """Register the baseline's header task (``bench.noop``) and chord body (``bench.collect``) on ``app``.

    The tasks carry their queues (branch queue and control queue, as fanflow's do), so they route
    the same way from the producer and from the worker that publishes the chord body.
    """

    @app.task(name=NOOP_TASK, queue=PY_QUEUE, shared=False)
    def plain_noop() -> None:
        """The baseline's branch: nothing."""

    @app.task(name=COLLECT_TASK, queue=CONTROL_QUEUE, shared=False)
    def collect(results: list[Any]) -> int:
        """The baseline's chord body: how many header results arrived."""
        return len(results)

    return plain_noop, collect


def register_plain_sleep_task(app: Celery) -> Task[Any, Any]:
    """Register ``bench.sleep`` (``sleep``) on ``app``, on its default queue."""

    @app.task(name=SLEEP_TASK, shared=False)
    def plain_sleep(seconds: float) -> list[float]:
        """One node of the level-by-level scheduler."""
        return sleep(seconds)

    return plain_sleep


# --- the plain baseline of bench.io_fanout: one model call per task -------------------------------

LLM_CALL_TASK = "bench.llm_call"
LLM_COLLECT_TASK = "bench.llm_collect"

_llm_client: httpx.Client | None = None
_llm_tls: ssl.SSLContext | None = None
_llm_lock = threading.Lock()
_llm_local = threading.local()


def _new_llm_client() -> httpx.Client:
    """A client with fanflow's model-call pool and timeouts (no connection limit, 1000 kept alive), so
    that httpx's default of 100 connections per client does not cap the calls in flight."""
    global _llm_tls
    with _llm_lock:
        if _llm_tls is None:  # costly to build: every client of the process shares one
            _llm_tls = httpx.create_ssl_context()
    return httpx.Client(
        limits=httpx.Limits(max_connections=None, max_keepalive_connections=1000),
        timeout=httpx.Timeout(600.0, connect=10.0),
        verify=_llm_tls,
    )


def llm_http(*, per_thread: bool = False) -> httpx.Client:
    """The process's one ``httpx.Client``, shared by every task thread (created on first use).

    ``per_thread``: the calling thread's own client instead (a connection pool per thread).
    """
    global _llm_client
    if per_thread:
        client: httpx.Client | None = getattr(_llm_local, "client", None)
        if client is None:
            client = _llm_local.client = _new_llm_client()
        return client
    if _llm_client is None:
        client = _new_llm_client()
        with _llm_lock:
            if _llm_client is None:
                _llm_client = client
    return _llm_client


def register_plain_llm_tasks(
    app: Celery, base_url: str, *, per_thread: bool = False
) -> tuple[Task[Any, Any], Task[Any, Any]]:
    """Register ``bench.llm_call`` (one chat completion at ``base_url``) and ``bench.llm_collect``.

    Both on Celery's default queue. ``base_url`` is OpenAI's (``http://host:port/v1``).
    ``per_thread``: each task thread calls through a client of its own (see ``llm_http``).
    """
    endpoint = base_url.rstrip("/") + "/chat/completions"

    @app.task(name=LLM_CALL_TASK, shared=False)
    def llm_call(index: int) -> str:
        """One POST to the chat completions endpoint; the answer's text."""
        response = llm_http(per_thread=per_thread).post(
            endpoint,
            headers={"Authorization": "Bearer fake"},
            json={
                "model": "gpt-4o-mini",
                "messages": [{"role": "user", "content": f"question {index}"}],
                "max_tokens": 16,
                "temperature": 0.0,
            },
        )
        response.raise_for_status()
        text: str = response.json()["choices"][0]["message"]["content"]
        return text

    @app.task(name=LLM_COLLECT_TASK, shared=False)
    def llm_collect(results: list[str]) -> list[str]:
        """The chord body: every answer, in the header's order."""
        return results

    return llm_call, llm_collect
