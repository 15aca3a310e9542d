"""A pipeline file: fanflow's own format (``nodes`` and ``edges`` of ``PipelineNode`` / ``Edge``) or
the seed tutorial's graph format (``models``, ``prompts``, ``nodes``, ``edges``), told apart by its keys."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

from fanflow.pipeline.seed_format import LoadedGraph, is_seed_graph, seed_graph
from fanflow.pipeline.spec import Pipeline, validate_pipeline
from fanflow.spec import FanOut, validate_fanout
from fanflow.spec_files import read_spec_file

__all__ = ["is_pipeline_data", "load_job_file", "load_pipeline", "pipeline_from_data"]


def is_pipeline_data(data: object) -> bool:
    """True for a mapping that describes a pipeline (either format), not a fan-out."""
    return isinstance(data, dict) and (is_seed_graph(data) or ("edges" in data and "subtasks" not in data))


def load_pipeline(path: str | Path, *, name: str | None = None) -> LoadedGraph:
    """Load a pipeline file of either format, with the model providers a seed graph declares.

    Raises:
        SpecError: one line naming the file and the field.
    """
    data, source = read_spec_file(path, what="pipeline")
    pipeline = pipeline_from_data(data, name=name or Path(path).stem, source=source)
    return LoadedGraph(pipeline, dict(pipeline.providers))


def pipeline_from_data(data: object, *, name: str = "pipeline", source: str | None = None) -> Pipeline:
    """A pipeline from parsed data of either format (``name`` when the data names none).

    Raises:
        SpecError: naming the field (and ``source``, when given).
    """
    if is_seed_graph(data):
        return seed_graph(data, name=name, source=source).pipeline
    if isinstance(data, dict) and "name" not in data:
        data = {**data, "name": name}
    return validate_pipeline(cast(dict[str, Any], data), source=source)


def load_job_file(path: str | Path) -> FanOut | Pipeline:
    """A job file of any kind: a fan-out spec, or a pipeline of either format.

    Raises:
        SpecError: one line naming the file and the field.
    """
    data, source = read_spec_file(path)
    if is_pipeline_data(data):
        return pipeline_from_data(data, name=Path(path).stem, source=source)
    return validate_fanout(data, source=source)
