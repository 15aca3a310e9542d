"""A pipeline file: fanflow's own format (``nodes`` and ``edges`` of ``PipelineNode`` / ``Edge``) or
the seed tutorial's graph format (``models``, ``prompts``, ``nodes``, ``edges``), told apart by its keys."""

from __future__ import annotations

from pathlib import Path

from fanflow.pipeline.seed_format import LoadedGraph, is_seed_graph, seed_graph
from fanflow.pipeline.spec import validate_pipeline
from fanflow.spec_files import read_spec_file

__all__ = ["is_pipeline_data", "load_pipeline"]


def is_pipeline_data(data: object) -> bool:
    """True for a mapping that describes a pipeline (either format), not a fan-out."""
    return isinstance(data, dict) and (is_seed_graph(data) or ("edges" in data and "subtasks" not in data))


def load_pipeline(path: str | Path, *, name: str | None = None) -> LoadedGraph:
    """Load a pipeline file of either format, with the model providers a seed graph declares.

    Raises:
        SpecError: one line naming the file and the field.
    """
    data, source = read_spec_file(path, what="pipeline")
    stem = Path(path).stem
    if is_seed_graph(data):
        return seed_graph(data, name=name or stem, source=source)
    if isinstance(data, dict) and "name" not in data:
        data = {**data, "name": name or stem}
    return LoadedGraph(pipeline=validate_pipeline(data, source=source), providers={})
