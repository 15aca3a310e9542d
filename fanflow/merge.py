"""Merge strategies: combine the succeeded branches' outputs, always in declared order.

``git_merge`` (``fanflow.gitmerge``) merges the branches' git work instead of their outputs.
"""

from __future__ import annotations

import json
from typing import Any

from fanflow.errors import MergeConflictError, MergeError
from fanflow.gitmerge import git_merge
from fanflow.imports import import_object
from fanflow.result import SubtaskOutcome
from fanflow.spec import ConcatenateMerge, CustomMerge, GitMerge, KeyMerge, MergeSpec, SynthesizeMerge

__all__ = ["merge_outputs"]


def merge_outputs(spec: MergeSpec, outcomes: list[SubtaskOutcome], *, context: Any = None) -> Any:
    """Combine the outputs of ``outcomes`` (succeeded branches, in declared order).

    Raises:
        MergeError: the outputs cannot be combined as declared (``MergeConflictError`` for conflicts).
    """
    match spec:
        case ConcatenateMerge():
            outputs = [o.output for o in outcomes]
            if spec.separator is None:
                return outputs
            return spec.separator.join(o if isinstance(o, str) else _text(o) for o in outputs)
        case KeyMerge():
            return _key_merge(spec, outcomes)
        case CustomMerge():
            return _custom_merge(spec, outcomes, context)
        case GitMerge():
            return git_merge(spec, outcomes)
        case SynthesizeMerge():
            raise MergeError("merge strategy 'synthesize' needs the llm executor, which this version lacks")
    raise MergeError(f"unknown merge strategy {spec!r}")  # pragma: no cover - the union is closed


def _text(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def _key_merge(spec: KeyMerge, outcomes: list[SubtaskOutcome]) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    origin: dict[str, str] = {}
    for outcome in outcomes:
        for entity, item in _entities(spec, outcome):
            if entity not in merged:
                merged[entity] = [item] if spec.on_conflict == "collect" else item
                origin[entity] = outcome.key
                continue
            merged[entity] = _resolve(spec, entity, merged[entity], item, origin[entity], outcome.key)
    return merged


def _entities(spec: KeyMerge, outcome: SubtaskOutcome) -> list[tuple[str, Any]]:
    if spec.field is None:
        return [(outcome.key, outcome.output)]
    items = outcome.output if isinstance(outcome.output, list) else [outcome.output]
    entities = []
    for item in items:
        if not isinstance(item, dict) or spec.field not in item:
            raise MergeError(
                f"key_merge by field {spec.field!r}: branch {outcome.key!r} gave an item without that field"
            )
        entities.append((str(item[spec.field]), item))
    return entities


def _resolve(spec: KeyMerge, entity: str, current: Any, item: Any, first_key: str, key: str) -> Any:
    match spec.on_conflict:
        case "first":
            return current
        case "last":
            return item
        case "collect":
            return [*current, item]
        case "update":
            if not isinstance(current, dict) or not isinstance(item, dict):
                raise MergeError(f"key_merge on_conflict=update needs objects for entity {entity!r}")
            return {**current, **item}
    raise MergeConflictError(
        f"entity {entity!r} comes from branch {first_key!r} and from branch {key!r} "
        "(on_conflict: error; choose first, last, update or collect to combine them)"
    )


def _custom_merge(spec: CustomMerge, outcomes: list[SubtaskOutcome], context: Any) -> Any:
    try:
        function = import_object(spec.function)
    except ImportError as exc:
        raise MergeError(str(exc)) from exc
    try:
        return function(outcomes, context=context, **spec.options)
    except Exception as exc:
        raise MergeError(f"custom merge {spec.function!r} raised {type(exc).__name__}: {exc}") from exc
