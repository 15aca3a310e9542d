"""A fan-out with RabbitMQ as the broker; Redis stays the result backend and the job store.

The worker is a ``celery -A workers worker`` process: an in-process worker of this pytest process
would share Celery's process globals (current app, worker state) with the integration tests'
Redis-broker worker. RabbitMQ comes from ``FANFLOW_TEST_AMQP_URL`` (default: a local one); without
it the test fails under CI (``CI=true``, where ``.ci/run`` starts one) and is skipped elsewhere.

fanflow's queue names are fixed, so they are purged before each test: messages left over by an
earlier run cannot reach this test's worker.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from amqp.exceptions import AMQPError
from kombu import Connection
from kombu.exceptions import OperationalError

from fanflow.app import ALL_QUEUES
from fanflow.client import Client
from fanflow.config import Settings
from fanflow.result import JobStatus
from fanflow.spec import FanOut, PyCall, Subtask
from tests.e2e.conftest import StartWorker, worker_env

pytestmark = pytest.mark.e2e

DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672//"
FN = "tests.callables:"


def _unreachable(reason: str) -> None:
    message = f"RabbitMQ is not reachable at FANFLOW_TEST_AMQP_URL (default {DEFAULT_AMQP_URL}): {reason}"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message + " (CI must provide RabbitMQ: see .ci/run)", pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="module")
def amqp_url() -> str:
    """The RabbitMQ URL, checked reachable."""
    url = os.environ.get("FANFLOW_TEST_AMQP_URL") or DEFAULT_AMQP_URL
    connection = Connection(url, connect_timeout=5)
    try:
        with connection:
            connection.ensure_connection(max_retries=1)
    except (OSError, OperationalError, AMQPError) as error:  # refused, timed out, login refused
        _unreachable(f"{type(error).__name__}: {error}")
    return url


class Rabbit(NamedTuple):
    """A client on RabbitMQ (broker) and Redis (result backend and job store), and its settings."""

    client: Client
    amqp_url: str
    redis_url: str
    key_prefix: str


@pytest.fixture(scope="module")
def rabbit_module(amqp_url: str, e2e_redis_url: str) -> Iterator[Rabbit]:
    """One client for the module.

    Celery keeps one broker connection pool per URL for the whole process (``kombu.pools``), so
    closing a client closes it for every app on that broker: close it once, at the end.
    """
    prefix = f"fanflow-e2e-rabbit-{secrets.token_hex(4)}"
    settings = Settings(
        broker_url=amqp_url, result_backend=e2e_redis_url, store_url=e2e_redis_url,
        key_prefix=prefix, task_events=False,
    )  # fmt: skip
    client = Client.from_settings(settings)
    yield Rabbit(client, amqp_url, e2e_redis_url, prefix)
    client.close()


@pytest.fixture
def rabbit(rabbit_module: Rabbit, start_worker: StartWorker) -> Rabbit:
    """``rabbit_module`` with fanflow's queues purged (left-overs of earlier runs) and a worker on them."""
    app = rabbit_module.client.app
    with app.connection_for_write() as connection:
        for name in ALL_QUEUES:
            queue = app.amqp.queues[name].bind(connection.default_channel)  # as the worker declares it
            queue.declare()
            queue.purge()
    env = worker_env(rabbit_module.amqp_url, rabbit_module.key_prefix)
    env["FANFLOW_RESULT_BACKEND"] = rabbit_module.redis_url
    worker = start_worker("rabbit", env=env, queues=",".join(ALL_QUEUES), concurrency=8)
    worker.wait_ready()
    return rabbit_module


def _branch(key: str, function: str, **kwargs: Any) -> Subtask:
    return Subtask(key=key, run=PyCall(function=FN + function, kwargs=kwargs))


@pytest.mark.timeout(120)
def test_a_fan_out_over_rabbitmq_merges_once_in_declared_order(rabbit: Rabbit) -> None:
    spec = FanOut(
        name="rabbit-fanout",
        subtasks=[_branch(f"b{i:02d}", "echo", value=f"v{i}", delay=0.05 * (i % 3)) for i in range(20)],
        merge={"strategy": "concatenate"},
    )
    handle = rabbit.client.submit(spec)
    result = handle.wait(timeout=60)
    assert result.status is JobStatus.SUCCEEDED
    assert result.merged == [f"v{i}" for i in range(20)]
    assert [outcome.key for outcome in result.outcomes] == [f"b{i:02d}" for i in range(20)]
    assert handle.progress().merges == 1


@pytest.mark.timeout(120)
def test_a_failed_branch_is_merged_by_the_errback_and_retried_over_rabbitmq(
    rabbit: Rabbit, tmp_path: Path
) -> None:
    marker = tmp_path / "ready"
    spec = FanOut(
        name="rabbit-best-effort",
        subtasks=[
            _branch("a", "echo", value=1),
            _branch("bad", "fail", message="bad input"),
            _branch("late", "fail_unless_exists", path=str(marker), value=3),
            _branch("d", "echo", value=4),
        ],
        failure={"policy": "best_effort"},
    )
    handle = rabbit.client.submit(spec)
    first = handle.wait(timeout=60)
    # A branch raised: Celery skipped the chord body and ran its errback, the same merge, once.
    assert first.status is JobStatus.PARTIAL
    assert first.merged == [1, 4]
    assert first.flagged == ["bad", "late"]
    failed = first.outcome("bad")
    assert failed.error is not None and "bad input" in failed.error.message
    assert handle.progress().merges == 1

    marker.touch()
    second = handle.retry_failed().wait(timeout=60)
    assert second.round == 1
    assert second.status is JobStatus.PARTIAL  # "bad" fails again, "late" now succeeds
    assert second.merged == [1, 3, 4]
    assert second.flagged == ["bad"]
    assert second.outcome("late").round == 1 and second.outcome("a").round == 0
    assert handle.progress().merges == 2


@pytest.mark.timeout(120)
def test_branches_held_back_by_max_concurrency_are_sent_again_over_rabbitmq(rabbit: Rabbit) -> None:
    # A branch over the job's cap goes back to its queue with Celery's retry (a new message).
    spec = FanOut(
        name="rabbit-capped",
        subtasks=[_branch(f"c{i}", "echo", value=i, delay=0.2) for i in range(6)],
        max_concurrency=2,
    )
    handle = rabbit.client.submit(spec)
    result = handle.wait(timeout=60)
    assert result.status is JobStatus.SUCCEEDED
    assert result.merged == list(range(6))
    assert handle.progress().merges == 1
