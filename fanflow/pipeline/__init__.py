"""Pipelines: DAGs of tasks and fan-outs, in the seed tutorial's edge syntax.

- ``spec``: the ``Pipeline`` / ``PipelineNode`` / ``Edge`` models and their validation;
- ``graph``: the dependency ``Graph`` of a pipeline (inputs in declared order, guards, schedules);
- ``seed_format``: graph files of the seed tutorial's own format loaded as pipelines;
- ``mermaid``: a pipeline drawn as a Mermaid flowchart.
"""

from fanflow.pipeline.graph import Graph
from fanflow.pipeline.loading import is_pipeline_data, load_pipeline
from fanflow.pipeline.mermaid import to_mermaid
from fanflow.pipeline.seed_format import LoadedGraph, is_seed_graph, load_graph, ollama_provider, seed_graph
from fanflow.pipeline.spec import (
    GUARD_VERDICT,
    PIPELINE_VARS,
    Edge,
    EdgeForm,
    Link,
    Pipeline,
    PipelineFailure,
    PipelineNode,
    declared_links,
    guard_verdict,
    validate_pipeline,
)

__all__ = [
    "GUARD_VERDICT",
    "PIPELINE_VARS",
    "Edge",
    "EdgeForm",
    "Graph",
    "Link",
    "LoadedGraph",
    "Pipeline",
    "PipelineFailure",
    "PipelineNode",
    "declared_links",
    "guard_verdict",
    "is_pipeline_data",
    "is_seed_graph",
    "load_graph",
    "load_pipeline",
    "ollama_provider",
    "seed_graph",
    "to_mermaid",
    "validate_pipeline",
]
