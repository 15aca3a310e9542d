"""The Celery app: JSON only, late acks, consistent visibility timeout, one queue per kind of work."""

from __future__ import annotations

import logging
import threading
from typing import Any

from celery import Celery, bootsteps
from kombu import Exchange, Queue

from fanflow.admission import Gate
from fanflow.backend import backend_url
from fanflow.branch import BranchRunner
from fanflow.config import Settings
from fanflow.errors import ConfigError
from fanflow.executors.llm.providers import configure as configure_models
from fanflow.ratelimit import Limiter
from fanflow.recovery import BrokerProbe, LeaseKeeper, Sweeper
from fanflow.store import JobStore
from fanflow.tasks import ChordFailureLogFilter, register_tasks
from fanflow.transport import transport_for

__all__ = [
    "CONTROL_QUEUE",
    "QUEUES",
    "QUEUE_CONCURRENCY",
    "create_app",
    "default_concurrency",
    "limiter_of",
    "store_of",
]

#: The queue of each kind of work, so each can be scaled on its own.
QUEUES: dict[str, str] = {"python": "fanflow.py", "llm": "fanflow.llm", "agent": "fanflow.agent"}
#: Merges and other bookkeeping.
CONTROL_QUEUE = "fanflow.control"
ALL_QUEUES = [*QUEUES.values(), CONTROL_QUEUE]
#: Worker threads per queue when ``fanflow worker`` is given no ``-c``: model calls wait on the
#: network (hundreds in flight per process), agents are whole processes, Python callables and merges
#: use the CPU. A worker consuming several queues takes the largest of theirs, except that model
#: calls only set it when they are the worker's only work besides ``fanflow.control``.
QUEUE_CONCURRENCY: dict[str, int] = {"fanflow.llm": 500, "fanflow.agent": 4, "fanflow.py": 16,
                                     CONTROL_QUEUE: 16}  # fmt: skip


def default_concurrency(queues: list[str]) -> int:
    """The worker threads ``fanflow worker -Q queues`` starts without ``-c``."""
    work = [q for q in queues if q != CONTROL_QUEUE]
    if not work:
        return QUEUE_CONCURRENCY[CONTROL_QUEUE]
    others = [q for q in work if q != QUEUES["llm"]] or work
    return max(QUEUE_CONCURRENCY.get(q, 16) for q in others)


def celery_config(settings: Settings) -> dict[str, Any]:
    """Celery settings derived from fanflow's; every reliability default in one place."""
    transport = {"visibility_timeout": settings.visibility_timeout_s}
    # kombu's Redis transport gives a dead worker's unacked messages back only when a live worker
    # sweeps for them: every unacked_restore_interval seconds, scanning on every Nth sweep only
    # (unacked_restore_throttle, default 10), i.e. about every 100 s. Sweep often enough that a
    # crashed worker's branches come back soon after the visibility timeout; a sweep is one query.
    broker_transport = {
        **transport,
        "unacked_restore_interval": max(1, min(10, settings.visibility_timeout_s // 5)),
        "unacked_restore_throttle": 1,
    }
    return {
        # JSON only, everywhere: no pickle can reach a worker.
        "task_serializer": "json",
        "result_serializer": "json",
        "event_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        # A branch whose worker dies is delivered again (the store dedupes and caps deliveries).
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": settings.prefetch_multiplier,
        # Must match in broker and backend and exceed every branch timeout (kombu#337).
        "broker_transport": transport_for(settings.broker_url_value),
        "broker_transport_options": broker_transport,
        "result_backend_transport_options": transport,
        # Chord keys are re-expired on every part; results live in the job store anyway.
        "result_expires": settings.result_ttl_s,
        # Each queue on a direct exchange of its own name: messages go by queue name (the anonymous
        # exchange) either way, but a bare Queue(name) would bind every queue to the default
        # exchange under one routing key, and a message sent there would land in all four.
        "task_queues": [Queue(name, Exchange(name, type="direct"), routing_key=name) for name in ALL_QUEUES],
        "task_default_queue": CONTROL_QUEUE,
        "worker_send_task_events": settings.task_events,
        "task_send_sent_event": settings.task_events,
        "broker_connection_retry_on_startup": True,
        "worker_soft_shutdown_timeout": settings.soft_shutdown_timeout_s,
        "worker_cancel_long_running_tasks_on_connection_loss": False,
    }


def create_app(settings: Settings, *, main: str = "fanflow") -> Celery:
    """A Celery app with fanflow's tasks registered, for ``settings``' broker and store.

    Raises:
        ConfigError: no broker is configured.
    """
    broker = settings.broker_url_value
    store_url = settings.store_url_value
    if broker is None or store_url is None:
        raise ConfigError(
            "no broker configured: set FANFLOW_BROKER_URL (e.g. redis://:password@host:6379/0), "
            "or use `fanflow run`, which starts an embedded Redis"
        )
    app = Celery(
        main,
        broker=broker,
        backend=backend_url(settings.result_backend_value),
        set_as_current=False,
    )
    app.conf.update(celery_config(settings))
    configure_models(providers=settings.providers, prices=settings.prices)
    store = JobStore.from_url(
        store_url, prefix=settings.key_prefix, ttl_s=settings.result_ttl_s,
        max_connections=settings.store_max_connections or 64,
    )  # fmt: skip
    keeper = LeaseKeeper(store, lease_s=settings.lease_s)
    limiter = Limiter(store.client, prefix=settings.key_prefix, lease_s=settings.lease_s)
    # A deferred branch's countdown stays well below the visibility timeout (kombu would deliver
    # the waiting message again).
    gate = Gate(limiter, wait_in_slot_s=settings.limit_wait_in_slot_s,
                max_countdown_s=max(1.0, settings.visibility_timeout_s / 2), pacer=store)  # fmt: skip
    keeper.renewers.append(gate.renew)
    runner = BranchRunner(
        store, delivery_cap=settings.delivery_cap, lease_s=settings.lease_s, keeper=keeper, gate=gate
    )
    from fanflow.pipeline.runtime import PipelineRuntime

    runner.pipelines = PipelineRuntime(app, store)
    register_tasks(app, runner)
    _install_log_filter(logging.getLogger("celery.backends.redis"), ChordFailureLogFilter())
    app.steps["consumer"].add("fanflow.poison:PoisonGuard")  # malformed messages: rejected, never run
    app.fanflow_store = store  # type: ignore[attr-defined]
    app.fanflow_runner = runner  # type: ignore[attr-defined]
    app.fanflow_settings = settings  # type: ignore[attr-defined]
    app.fanflow_limiter = limiter  # type: ignore[attr-defined]
    app.fanflow_sweeper = Sweeper(  # type: ignore[attr-defined]
        app, runner, interval_s=settings.sweep_interval_s, grace_s=settings.redelivery_grace_s,
        probe=_broker_probe(settings, broker_transport_options=app.conf.broker_transport_options),
    )  # fmt: skip
    app.steps["worker"].add(RecoveryStep)
    return app


def _install_log_filter(logger: logging.Logger, log_filter: logging.Filter) -> None:
    if not any(isinstance(existing, type(log_filter)) for existing in logger.filters):
        logger.addFilter(log_filter)


def _broker_probe(settings: Settings, *, broker_transport_options: dict[str, Any]) -> BrokerProbe | None:
    broker = settings.broker_url_value
    if broker is None or not broker.startswith(("redis://", "rediss://")):
        return None
    import redis

    client = redis.Redis.from_url(broker, socket_timeout=30, socket_connect_timeout=10, max_connections=4)
    return BrokerProbe(client, queues=ALL_QUEUES, transport_options=broker_transport_options)


class RecoveryStep(bootsteps.StartStopStep):
    """Worker bootstep: size the job store's pool to the worker's threads; run the sweeper."""

    requires = ("celery.worker.components:Pool",)

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        super().__init__(worker, **kwargs)
        settings: Settings = worker.app.fanflow_settings
        threads = int(worker.concurrency or 1)
        worker.app.fanflow_runner.batches.threads = threads  # batches of model calls: as many threads
        if settings.store_max_connections is None:
            # One connection per task thread and per batch thread, plus the heartbeat, the sweeper
            # and the chord joins (connections open only when used).
            store_of(worker.app).resize_pool(2 * threads + 8, per_thread=True)
        # Agent runs whose worker died (SIGKILL) left worktrees: commit their work, remove them.
        threading.Thread(target=_clean_worktrees, name="fanflow-worktree-cleanup", daemon=True).start()

    def create(self, worker: Any) -> Sweeper:  # type: ignore[override]
        """The sweeper this step starts, stops and terminates with the worker."""
        sweeper: Sweeper = worker.app.fanflow_sweeper
        sweeper.hostname = str(getattr(worker, "hostname", "") or sweeper.hostname)
        return sweeper


def _clean_worktrees() -> None:
    from fanflow.executors.agent import AGENT_EXECUTOR

    try:
        removed = AGENT_EXECUTOR.worktrees.cleanup_known()
    except Exception:
        logging.getLogger("fanflow").exception("fanflow: cleaning up dead runs' worktrees failed")
        return
    if removed:
        logging.getLogger("fanflow").info("fanflow: removed %d worktrees of dead agent runs", len(removed))


def limiter_of(app: Celery) -> Limiter:
    """The shared limiter of an app built by ``create_app``."""
    limiter: Limiter = app.fanflow_limiter  # type: ignore[attr-defined]
    return limiter


def store_of(app: Celery) -> JobStore:
    """The job store an app built by ``create_app`` writes to."""
    store: JobStore = app.fanflow_store  # type: ignore[attr-defined]
    return store
