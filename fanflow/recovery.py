"""Crash recovery that does not wait for the broker's visibility timeout.

Two parts, both in every worker process:

- ``LeaseKeeper`` (the heartbeat). A branch or merge that begins takes a lease in the job store
  (``begin_branch.lua`` / ``begin_merge.lua``); a thread of the worker renews every lease the process
  holds every ``lease_s / 6`` seconds, one script call per job. While the lease is live, another
  delivery of the same message (kombu restores an unacked message after the visibility timeout,
  whoever is still running it) finds it held and is dropped: a live worker's branch runs once,
  however long it takes.
- ``Sweeper``. Every ``sweep_interval_s`` one worker (whoever takes a short lock in Redis) looks at
  every job with a round in progress (``sweep_job.lua``) and delivers again, as the *same* header
  message of the same chord (deterministic task ids, so Celery's chord counts it once):
  branches whose lease lapsed (their worker died: within ``lease_s + sweep_interval_s`` of the
  death), branches sent but never begun while the job stalled whose message the broker no longer
  holds (kombu's Redis transport loses a message popped by a worker killed before it records it
  as unacked), and a merge that never ran or whose worker died. The job store makes every second
  delivery harmless: outcomes are written once, a merge saves its round's result once.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import redis
from celery import Celery

from fanflow.keys import sweeper_lock_key
from fanflow.spec import FanOut
from fanflow.store import JobStore

if TYPE_CHECKING:
    from fanflow.branch import BranchRunner

__all__ = ["BrokerProbe", "LeaseKeeper", "Sweeper"]

logger = logging.getLogger("fanflow.recovery")

#: How often a worker renews its leases, as a fraction of the lease.
HEARTBEATS_PER_LEASE = 6


class LeaseKeeper:
    """The leases this worker process holds (job → member → token), renewed by a heartbeat thread."""

    def __init__(self, store: JobStore, *, lease_s: float) -> None:
        self.store = store
        self.lease_s = lease_s
        self.interval_s = lease_s / HEARTBEATS_PER_LEASE
        self._held: dict[str, dict[str, str]] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._pid = 0
        self.beats = 0
        #: Called on every heartbeat too (the limiter's admissions renew their leases here).
        self.renewers: list[Callable[[], None]] = []

    @staticmethod
    def new_token() -> str:
        """A token naming one delivery of a branch or merge."""
        return secrets.token_hex(8)

    def hold(self, job_id: str, member: str, token: str) -> None:
        """Keep renewing ``member``'s lease on ``job_id`` until ``release``."""
        with self._lock:
            self._held.setdefault(job_id, {})[member] = token
            self._ensure_thread()

    def release(self, job_id: str, member: str) -> None:
        """Stop renewing a lease (its outcome is recorded, or it was never taken)."""
        with self._lock:
            members = self._held.get(job_id)
            if members is not None:
                members.pop(member, None)
                if not members:
                    del self._held[job_id]

    def held(self) -> dict[str, dict[str, str]]:
        """A snapshot of the leases held now."""
        with self._lock:
            return {job_id: dict(members) for job_id, members in self._held.items()}

    def _ensure_thread(self) -> None:
        # Started on first use, and again in a forked child (threads do not survive a fork).
        if self._thread is not None and self._pid == os.getpid() and self._thread.is_alive():
            return
        self._pid = os.getpid()
        self._thread = threading.Thread(target=self._run, name="fanflow-heartbeat", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            time.sleep(self.interval_s)
            self.beat()

    def beat(self) -> None:
        """Renew every lease held now (one script call per job); never raises."""
        self.beats += 1
        for renew in self.renewers:
            try:
                renew()
            except redis.RedisError as exc:
                logger.warning("fanflow: heartbeat could not renew limit leases: %s", exc)
        for job_id, members in self.held().items():
            try:
                lost = self.store.renew_leases(job_id, members, self.lease_s)
            except redis.RedisError as exc:
                logger.warning("fanflow: heartbeat could not renew leases of job %s: %s", job_id, exc)
                continue
            if lost:  # recorded meanwhile (normal), or taken over after missed heartbeats
                logger.debug("fanflow: job %s: leases no longer held here: %s", job_id, ", ".join(lost))


_TASK_ID = re.compile(rb'"id": "([^"]+)"')


class BrokerProbe:
    """Tells which task messages a Redis broker still holds (queued, or unacked by a live worker).

    Reads kombu's Redis transport layout: one list per queue (plus one per priority step) and the
    ``unacked`` hash with its ``unacked_index`` of delivery times.
    """

    PRIORITY_SEPARATOR = "\x06\x16"
    PRIORITY_STEPS = (3, 6, 9)

    def __init__(self, client: redis.Redis, *, queues: Iterable[str], transport_options: dict[str, Any]):
        self.client = client
        prefix = str(transport_options.get("global_keyprefix", ""))
        self.lists = [
            prefix + name
            for queue in queues
            for name in (queue, *(f"{queue}{self.PRIORITY_SEPARATOR}{step}" for step in self.PRIORITY_STEPS))
        ]
        self.unacked = prefix + str(transport_options.get("unacked_key", "unacked"))
        self.unacked_index = prefix + str(transport_options.get("unacked_index_key", "unacked_index"))

    def present(self, task_ids: set[str], *, fresh_s: float, chunk: int = 1000) -> set[str]:
        """The ids among ``task_ids`` whose message is in a queue, or unacked for under ``fresh_s``.

        An unacked message older than that belongs to a worker that died before running it (or
        that waits on a dead connection); kombu would only restore it after the visibility timeout.
        """
        wanted = {task_id.encode() for task_id in task_ids}
        found: set[bytes] = set()
        for name in self.lists:
            start = 0
            while wanted - found:
                items = self.client.lrange(name, start, start + chunk - 1)
                for item in items:
                    match = _TASK_ID.search(item if isinstance(item, bytes) else item.encode())
                    if match and match.group(1) in wanted:
                        found.add(match.group(1))
                if len(items) < chunk:
                    break
                start += chunk
        if wanted - found:
            found |= self._fresh_unacked(wanted - found, fresh_s)
        return {task_id.decode() for task_id in found}

    def _fresh_unacked(self, wanted: set[bytes], fresh_s: float) -> set[bytes]:
        oldest = time.time() - fresh_s
        found: set[bytes] = set()
        for tag, payload in self.client.hscan_iter(self.unacked, count=500):
            match = _TASK_ID.search(payload if isinstance(payload, bytes) else payload.encode())
            if not match or match.group(1) not in wanted:
                continue
            delivered = self.client.zscore(self.unacked_index, tag)
            if delivered is not None and delivered >= oldest:
                found.add(match.group(1))
        return found


class Sweeper:
    """Delivers again what crashed workers and lost messages left behind (see the module doc)."""

    def __init__(
        self,
        app: Celery,
        runner: BranchRunner,
        *,
        interval_s: float,
        grace_s: float,
        probe: BrokerProbe | None,
        hostname: str = "",
    ) -> None:
        self.app = app
        self.runner = runner
        self.store = runner.store
        self.interval_s = interval_s
        self.grace_s = grace_s
        self.probe = probe
        self.hostname = hostname or f"{os.getpid()}"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Sweep every ``interval_s`` in a daemon thread until ``stop``."""
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="fanflow-sweeper", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop sweeping."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    terminate = stop

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.sweep_once()
            except redis.RedisError as exc:
                logger.warning("fanflow: sweep skipped, Redis unreachable: %s", exc)
            except Exception:
                logger.exception("fanflow: sweep failed")

    def sweep_once(self, *, force: bool = False) -> dict[str, int]:
        """Sweep every active job if this worker holds the sweep lock; return what was sent again."""
        lock = sweeper_lock_key(self.store.prefix)
        ttl_ms = max(100, int(self.interval_s * 900))
        if not force and not self.store.client.set(lock, self.hostname, nx=True, px=ttl_ms):
            return {}
        sent = {"branches": 0, "lost": 0, "merges": 0}
        for job_id in self.store.active_jobs():
            try:
                counts = self._sweep_job(job_id)
            except redis.RedisError:
                raise  # Redis is down: the whole sweep waits for the next interval
            except Exception:  # one broken job must not stop the recovery of every other job
                logger.exception("fanflow: sweeping job %s failed", job_id)
                continue
            for name, count in counts.items():
                sent[name] += count
        return sent

    def _sweep_job(self, job_id: str) -> dict[str, int]:
        from fanflow.canvas import republish_branches, republish_merge

        report = self.store.sweep(job_id, self.grace_s)
        if report.state != "active":
            self.store.deactivate(job_id)
            return {}
        lost: list[str] = []
        if report.suspects:
            lost = self._lost(job_id, report.round, report.suspects)
            self.store.mark_sent(job_id, report.suspects)
        if report.lapsed:
            logger.warning(
                "fanflow: job %s: the worker running %s died (lease lapsed); delivering again",
                job_id, ", ".join(report.lapsed[:20]),
            )  # fmt: skip
        if lost:
            logger.warning(
                "fanflow: job %s: the messages of %s were lost before they began; delivering again",
                job_id, ", ".join(lost[:20]),
            )  # fmt: skip
        resend = sorted(set(report.lapsed) | set(lost))
        if not resend and not report.merge:
            return {}
        job = self.runner.job(job_id)  # only for what is sent again: most sweeps send nothing
        if resend and job.pipeline is not None:  # a pipeline's node is a task of its own, no chord
            from fanflow.pipeline.runtime import publish_nodes

            publish_nodes(self.app, job_id, job.spec, report.round, resend)
        elif resend:
            round_keys = self.store.round_keys(job_id) if report.round else None
            batches = self._batches(job_id, job.spec, report.round)
            republish_branches(self.app, job_id, job.spec, report.round, round_keys, resend, batches)
        if report.merge:
            logger.warning("fanflow: job %s: round %d's merge did not finish; delivering it again",
                           job_id, report.round)  # fmt: skip
            republish_merge(self.app, job_id, job.spec, report.round)
        return {"branches": len(report.lapsed), "lost": len(lost), "merges": int(report.merge)}

    def _batches(self, job_id: str, spec: FanOut, round_: int) -> list[list[str]] | None:
        """The batches the round was sent in (``fanflow.batching``), or None."""
        from fanflow.batching import batches_of

        size = self.store.batch_size(job_id) if round_ == 0 else 0
        return batches_of([subtask.key for subtask in spec.subtasks], size) if size else None

    def _lost(self, job_id: str, round_: int, suspects: list[str]) -> list[str]:
        from fanflow.canvas import batch_task_id, branch_task_id

        if self.probe is None:  # not a Redis broker: it does not lose popped messages
            return []
        message = {key: branch_task_id(job_id, round_, key) for key in suspects}
        batches = self._batches(job_id, self.runner.job(job_id).spec, round_)
        for index, keys in enumerate(batches or []):  # a batch's branches come in its message
            for key in set(keys) & set(suspects):
                message[key] = batch_task_id(job_id, round_, index)
        present = self.probe.present(set(message.values()), fresh_s=max(self.grace_s, 60.0))
        return [key for key, task_id in message.items() if task_id not in present]
