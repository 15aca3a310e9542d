"""Celery signatures for fanflow jobs: the fan-out is a group of ``fanflow.subtask``, the fan-in a
chord whose body is ``fanflow.merge``. The only module that builds signatures.

Results go to the job store, not to Celery's result backend: every signature ignores its result,
so the producer subscribes to nothing and workers skip a GET + SETEX + PUBLISH per task. (Celery
still joins the chord: a header task's return value reaches the chord's join list either way.)

Messages carry references (job id, branch key, round), never the spec: the header messages stay
small (every one of them also carries the body signature), and no prompt or secret reaches the
broker, the result backend or Flower. Workers read the spec from the job store once per job.
"""

from __future__ import annotations

from celery import Celery, chord
from celery.canvas import Signature

from fanflow.app import CONTROL_QUEUE, QUEUES
from fanflow.spec import FanOut
from fanflow.tasks import MERGE_TASK, SUBTASK_TASK

__all__ = ["build_fanout_chord"]


def build_fanout_chord(
    app: Celery, job_id: str, spec: FanOut, round_: int, keys: list[str] | None = None
) -> chord:
    """The chord running ``keys`` (default: every subtask) of job ``job_id`` in round ``round_``."""
    wanted = set(keys) if keys is not None else None
    header: list[Signature] = [
        app.signature(
            SUBTASK_TASK,
            args=(job_id, subtask.key, round_),
            queue=QUEUES[subtask.run.kind],
            ignore_result=True,
            # What Flower shows: ids and the job's name, never the prompt.
            argsrepr=f"(job={job_id}, key={subtask.key}, round={round_})",
            kwargsrepr=f"{{'job': {spec.name!r}}}",
        )
        for subtask in spec.subtasks
        if wanted is None or subtask.key in wanted
    ]
    body = app.signature(
        MERGE_TASK,
        args=(job_id, round_),
        queue=CONTROL_QUEUE,
        ignore_result=True,
        argsrepr=f"(job={job_id}, round={round_})",
        kwargsrepr=f"{{'job': {spec.name!r}}}",
    )
    return chord(header, body, app=app)
