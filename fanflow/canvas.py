"""Celery signatures and messages of fanflow jobs: the only module building them (with ``fanflow.publish``).

A round of a job is a chord: its header is one ``fanflow.subtask`` per branch, its body ``fanflow.merge``.
Every id is derived from the job, so a message can be published again as the very same chord part:

* ids: group (chord) ``{job}.r{round}``, branch ``{job}.r{round}.{key}``, merge ``{job}.r{round}#merge``;
* ``group_index`` is the branch's position in the round's header (declared order).

The header messages are published by ``fanflow.publish`` (pipelined and built from one template on a
Redis broker; Celery's own ``apply_async`` on any other); Celery's Redis backend joins them as usual
(``set_chord_size``, then each header task adds its result; the last one sends the body, once).

Results go to the job store, not to Celery's result backend: every signature ignores its result
(Celery still joins the chord). Messages carry references (job id, branch key, round), never the
spec: no prompt or secret reaches the broker, the result backend or Flower, and the header messages
stay small (each carries the body signature). What Flower shows: the task name ``fanflow.subtask``
with the shadow name ``fanflow.subtask[{job name}:{key}]`` and the true args ``('{job id}', '{key}', round)``.

A branch that raises makes Celery skip the body; once every header task has returned, Celery calls
the body's errback instead: the same ``fanflow.merge`` (an "old-style" errback, called with the body's
task id first: ``merge(body_task_id, job_id, round_)``), so the round is merged exactly once either way.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

from celery import Celery
from celery.canvas import Signature

from fanflow.app import CONTROL_QUEUE, QUEUES
from fanflow.publish import ChordPart, publish_parts
from fanflow.spec import FanOut
from fanflow.tasks import BATCH_TASK, MERGE_TASK, SUBTASK_TASK

__all__ = [
    "batch_parts",
    "batch_task_id",
    "branch_task_id",
    "group_id",
    "merge_signature",
    "merge_task_id",
    "publish_round",
    "republish_branches",
    "republish_merge",
    "round_parts",
]


def group_id(job_id: str, round_: int) -> str:
    """The chord (group) id of round ``round_`` of job ``job_id``."""
    return f"{job_id}.r{round_}"


def branch_task_id(job_id: str, round_: int, key: str) -> str:
    """The task id of branch ``key`` in round ``round_``."""
    return f"{job_id}.r{round_}.{key}"


def batch_task_id(job_id: str, round_: int, index: int) -> str:
    """The task id of batch ``index`` of round ``round_`` (``fanflow.batching``)."""
    return f"{job_id}.r{round_}.batch{index}"


def merge_task_id(job_id: str, round_: int) -> str:
    """The task id of the merge (the chord body) of round ``round_``."""
    return f"{job_id}.r{round_}#merge"


def _merge(app: Celery, job_id: str, spec: FanOut, args: tuple[object, ...]) -> Signature:
    return app.signature(
        MERGE_TASK, args=args, queue=CONTROL_QUEUE, ignore_result=True, shadow=f"{MERGE_TASK}[{spec.name}]"
    )


def merge_signature(app: Celery, job_id: str, spec: FanOut, round_: int) -> Signature:
    """The chord body of round ``round_``, frozen as Celery's chord freezes it (id, group id).

    Deterministic (no per-process ``reply_to``), so every publication of a header message carries
    byte for byte the same body. Its ``link_error`` is the same merge, for a header task that raised.
    """
    body = _merge(app, job_id, spec, (job_id, round_))
    body.link_error(_merge(app, job_id, spec, (job_id, round_)))
    body.options.update(task_id=merge_task_id(job_id, round_), group_id=group_id(job_id, round_))
    return body


def round_parts(
    job_id: str,
    spec: FanOut,
    round_: int,
    keys: Sequence[str] | None = None,
    etas: Mapping[str, str] | None = None,
) -> list[ChordPart]:
    """The header tasks of a round: ``keys`` (None: every subtask) in declared order, indexed in it.

    Raises:
        ValueError: a key that is not a subtask of ``spec``.
    """
    if keys is None:
        subtasks = spec.subtasks
    else:
        wanted = set(keys)
        unknown = wanted.difference(subtask.key for subtask in spec.subtasks)
        if unknown:
            raise ValueError(f"not subtasks of job {job_id}: {', '.join(sorted(unknown))}")
        subtasks = [subtask for subtask in spec.subtasks if subtask.key in wanted]
    prefix = f"{group_id(job_id, round_)}."
    shadow = f"{SUBTASK_TASK}[{spec.name}:"
    return [
        ChordPart(
            task_id=prefix + subtask.key,
            args=(job_id, subtask.key, round_),
            queue=QUEUES[subtask.run.kind],
            shadow=f"{shadow}{subtask.key}]",
            argsrepr=repr((job_id, subtask.key, round_)),
            group_index=index,
            eta=(etas or {}).get(subtask.key),
        )
        for index, subtask in enumerate(subtasks)
    ]


def batch_parts(job_id: str, spec: FanOut, round_: int, batches: Sequence[Sequence[str]]) -> list[ChordPart]:
    """The header tasks of a round sent in batches: ``fanflow.batch(job_id, keys, round)`` each."""
    shadow = f"{BATCH_TASK}[{spec.name}:"
    parts = []
    for index, keys in enumerate(batches):
        label = keys[0] if len(keys) == 1 else f"{keys[0]}..{keys[-1]}"
        args = (job_id, list(keys), round_)
        parts.append(ChordPart(
            task_id=batch_task_id(job_id, round_, index), args=args, queue=QUEUES["llm"],
            shadow=f"{shadow}{label}]", argsrepr=repr((job_id, f"<{len(keys)} branches>", round_)),
            group_index=index,
        ))  # fmt: skip
    return parts


def publish_round(
    app: Celery,
    job_id: str,
    spec: FanOut,
    round_: int,
    keys: Sequence[str] | None = None,
    etas: Mapping[str, str] | None = None,
    batches: Sequence[Sequence[str]] | None = None,
) -> None:
    """Set the chord size and publish every header message of the round.

    ``keys`` None: every subtask, in declared order; else only those keys, in declared order.
    ``batches``: the round's branches go in these batches (``fanflow.batching``) instead.

    Raises:
        ValueError: no branch to publish, or a key that is not a subtask of ``spec``.
    """
    if batches:
        parts = batch_parts(job_id, spec, round_, batches)
        body = merge_signature(app, job_id, spec, round_)
        publish_parts(app, BATCH_TASK, group_id(job_id, round_), body, parts, chord_size=len(parts))
        return
    parts = round_parts(job_id, spec, round_, keys, etas)
    if not parts:
        raise ValueError(f"job {job_id} round {round_}: no branch to publish")
    publish_parts(
        app, SUBTASK_TASK, group_id(job_id, round_), merge_signature(app, job_id, spec, round_), parts,
        chord_size=len(parts),
    )  # fmt: skip


def republish_branches(
    app: Celery,
    job_id: str,
    spec: FanOut,
    round_: int,
    round_keys: Sequence[str] | None,
    resend: Collection[str],
    batches: Sequence[Sequence[str]] | None = None,
) -> None:
    """Publish again the header messages of the branches in ``resend``, as ``publish_round`` did.

    Same task ids, group id, ``group_index`` (``round_keys``: the keys of that round, None: all) and
    chord body, so the chord counts each branch once. The chord size is left alone: setting it again
    would delete Celery's "done" marker and could let the body run twice.

    Raises:
        ValueError: a key of ``resend`` that is not in the round.
    """
    if batches:  # the batches holding them, whole: the job store runs only what has no outcome
        wanted = set(resend)
        chosen = [part for part in batch_parts(job_id, spec, round_, batches) if wanted & set(part.args[1])]
        body = merge_signature(app, job_id, spec, round_)
        publish_parts(app, BATCH_TASK, group_id(job_id, round_), body, chosen)
        return
    parts = round_parts(job_id, spec, round_, round_keys)
    wanted = set(resend)
    missing = wanted.difference(part.args[1] for part in parts)
    if missing:
        raise ValueError(f"job {job_id} round {round_} has no branch {', '.join(sorted(missing))}")
    selected = [part for part in parts if part.args[1] in wanted]
    publish_parts(
        app, SUBTASK_TASK, group_id(job_id, round_), merge_signature(app, job_id, spec, round_), selected
    )


def republish_merge(app: Celery, job_id: str, spec: FanOut, round_: int) -> None:
    """Publish the round's merge on its own: ``fanflow.merge(None, job_id, round_)``, the body's task id."""
    _merge(app, job_id, spec, (None, job_id, round_)).apply_async(task_id=merge_task_id(job_id, round_))
