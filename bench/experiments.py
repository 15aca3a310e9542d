"""Candidate fanflow patches, applied by monkeypatching so they can be measured without editing fanflow.

Each experiment is applied in the benchmark's producer and (through ``BENCH_EXPERIMENTS``) in its
worker, before any app is created. They are measurement aids, not production code: each one mirrors
a patch proposed for ``fanflow/``, with the smallest amount of copying, and checks that the code
it patches still looks as expected.

* ``store-fanin``: no Celery chord. The header is a plain group; ``record_outcome.lua`` says which
  outcome completed the round and that branch enqueues ``fanflow.merge`` itself. Saves Celery's
  per-branch chord-join script, the chord-size keys, and the body signature in every message.

(``batch-publish``, pipelined publishing of the header, has landed in ``fanflow.publish``.)
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["EXPERIMENTS", "apply_experiments"]

_applied: set[str] = set()

_RECORD_DONE = "redis.call('HINCRBY', KEYS[1], 'done', 1)"


def _store_fanin() -> None:
    from celery import Celery

    import fanflow.app
    import fanflow.client
    from fanflow.app import CONTROL_QUEUE
    from fanflow.branch import BranchRunner
    from fanflow.canvas import group_id, round_parts
    from fanflow.publish import publish_parts
    from fanflow.spec import FanOut
    from fanflow.store import EVENTS_MAXLEN, JobStore
    from fanflow.tasks import MERGE_TASK, SUBTASK_TASK

    # --- producer: the round's header messages as plain group members, no chord body ---------------
    def publish_group(
        app: Celery, job_id: str, spec: FanOut, round_: int, keys: Sequence[str] | None = None
    ) -> None:
        parts = round_parts(job_id, spec, round_, keys)
        publish_parts(app, SUBTASK_TASK, group_id(job_id, round_), None, parts)

    fanflow.client.publish_round = publish_group  # type: ignore[attr-defined]

    # --- job store: record_outcome returns 2 when this outcome completed the round ----------------
    original_init = JobStore.__init__

    def init(self: JobStore, client: Any, **kwargs: Any) -> None:
        original_init(self, client, **kwargs)
        script = self._record.script
        script = script if isinstance(script, str) else bytes(script).decode()
        # record_outcome below passes the script's keys and args itself: it knows six keys only.
        if _RECORD_DONE not in script or not script.rstrip().endswith("return 1") or "KEYS[7]" in script:
            raise RuntimeError("store-fanin: record_outcome.lua changed; update the experiment")
        script = script.replace(_RECORD_DONE, f"local done = {_RECORD_DONE}")
        head, _, _ = script.rstrip().rpartition("return 1")
        script = head + (
            "if done == tonumber(redis.call('HGET', KEYS[1], 'size') or '-1') then return 2 end\nreturn 1\n"
        )
        self._record = client.register_script(script)

    JobStore.__init__ = init  # type: ignore[method-assign]

    # --- worker: the branch that completes the round enqueues the merge ----------------------------
    register_tasks = fanflow.app.register_tasks  # type: ignore[attr-defined]

    def register(app: Celery, runner: BranchRunner) -> None:
        runner.app = app  # type: ignore[attr-defined]
        register_tasks(app, runner)

    fanflow.app.register_tasks = register  # type: ignore[attr-defined]
    original_run = BranchRunner.run

    def send_merge(self: BranchRunner, job_id: str, round_: int) -> None:
        self.app.send_task(  # type: ignore[attr-defined]
            MERGE_TASK,
            args=([], job_id, round_),
            queue=CONTROL_QUEUE,
            ignore_result=True,
        )

    # Branches of one process share the store: each thread collects its own record_outcome replies.
    local = threading.local()

    def record_outcome(self: JobStore, job_id: str, outcome: Any, *, cancel_on_failure: bool) -> bool:
        keys = self.keys(job_id)
        error = f"{outcome.key}: {outcome.error.type}: {outcome.error.message}" if outcome.error else ""
        reply = int(
            self._record(
                keys=[keys.meta, keys.rounds, keys.outcomes, keys.running, keys.events, keys.cancel],
                args=[
                    *(outcome.key, outcome.round, outcome.model_dump_json(), outcome.status.value),
                    *("1" if cancel_on_failure else "0", self.ttl_s, EVENTS_MAXLEN, error[:2000]),
                ],
            )
        )
        sink = getattr(local, "sink", None)
        if sink is not None:
            sink.append(reply)
        return bool(reply)

    JobStore.record_outcome = record_outcome  # type: ignore[method-assign]

    def run(self: BranchRunner, job_id: str, key: str, round_: int, *, worker: str | None = None) -> str:
        sink: list[int] = []
        local.sink = sink
        try:
            status = original_run(self, job_id, key, round_, worker=worker)
        finally:
            local.sink = None
        if sink and sink[0] == 2:
            send_merge(self, job_id, round_)
        elif status == "done":
            # A redelivery of a recorded branch: if the round is complete but unmerged (the worker
            # died between recording and enqueueing), enqueue the merge again; it is idempotent.
            meta = self.store.meta(job_id)
            if meta.round == round_ and meta.done >= meta.size and not meta.status.is_final:
                send_merge(self, job_id, round_)
        return status

    BranchRunner.run = run  # type: ignore[method-assign]


#: name -> (one-line description, experiments it needs first, function applying the patch)
EXPERIMENTS: dict[str, tuple[str, tuple[str, ...], Callable[[], None]]] = {
    "store-fanin": ("no chord: the last recorded outcome enqueues the merge", (), _store_fanin),
}


def apply_experiments(names: list[str]) -> list[str]:
    """Apply the named experiments (and those they need), each once; return every name applied.

    Raises:
        KeyError: an unknown name.
    """
    for name in names:
        if name not in EXPERIMENTS:
            raise KeyError(f"unknown experiment {name!r} (known: {', '.join(sorted(EXPERIMENTS))})")
        _, needs, patch = EXPERIMENTS[name]
        apply_experiments(list(needs))
        if name not in _applied:
            patch()
            _applied.add(name)
    return sorted(_applied)
