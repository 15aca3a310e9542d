"""A pipeline as a Mermaid ``flowchart LR``, drawn the way the seed tutorial draws its graphs.

::

    flowchart LR
        dispatcher[dispatcher] --> economic_analyst[economic_analyst]
        dispatcher --> social_analyst[social_analyst]
        step_1 -->|then| step_2[step_2]
        input_guard{{input_guard}} -.-> dispatcher

- one arrow per link, in declared order (a link declared twice is drawn once);
- links that chain the entries of an ordered list (``ordered_children`` / ``ordered_fan_in``)
  are labelled ``then``;
- a guard is a hexagon; its precedence over every non-guard node is drawn as a dotted arrow to
  each non-guard node that no other non-guard node precedes (the rest follow from those);
- a fan-out node (a whole ``FanOut``) is a subroutine box ``[[name]]``;
- a node shown to the user (``show: true``) is drawn with a thick border (class ``shown``).

Node ids that are not plain identifiers (or are Mermaid keywords) get a generated Mermaid id
(``id0``, ``id1`` ...) and keep their own name as the label.
"""

from __future__ import annotations

import re

from fanflow.pipeline.graph import Graph
from fanflow.pipeline.spec import Pipeline

__all__ = ["to_mermaid"]

_PLAIN_ID = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
_GENERATED_ID = re.compile(r"^id[0-9]+$")
_KEYWORDS = frozenset({
    "end", "graph", "flowchart", "subgraph", "direction", "style", "class", "classdef", "click",
    "linkstyle", "default", "call", "href",
})  # fmt: skip
_PLAIN_LABEL = re.compile(r"^[A-Za-z0-9_ ]+$")


def _mermaid_ids(pipeline: Pipeline) -> dict[str, str]:
    ids: dict[str, str] = {}
    for index, node in enumerate(pipeline.nodes):
        plain = _PLAIN_ID.match(node.id) and not _GENERATED_ID.match(node.id)
        ids[node.id] = node.id if plain and node.id.lower() not in _KEYWORDS else f"id{index}"
    return ids


def _shape(pipeline: Pipeline, node_id: str) -> str:
    node = pipeline.node(node_id)
    plain = _PLAIN_LABEL.match(node_id) and node_id.lower() not in _KEYWORDS
    label = node_id if plain else '"' + node_id.replace('"', "#quot;") + '"'
    if node.guard:
        return "{{" + label + "}}"
    if node.fanout is not None:
        return f"[[{label}]]"
    return f"[{label}]"


def to_mermaid(pipeline: Pipeline) -> str:
    """The pipeline as Mermaid flowchart text (ends with a newline)."""
    graph = Graph(pipeline)
    ids = _mermaid_ids(pipeline)
    drawn: set[str] = set()

    def ref(node_id: str) -> str:
        if node_id in drawn:
            return ids[node_id]
        drawn.add(node_id)
        return ids[node_id] + _shape(pipeline, node_id)

    lines = ["flowchart LR"]
    for link in graph.links():
        arrow = "-->|then|" if link.sequence else "-->"
        lines.append(f"    {ref(link.source)} {arrow} {ref(link.target)}")
    guards = set(graph.guards)
    for guard in graph.guards:
        for node_id in graph.nodes:
            if node_id in guards or guard in graph.predecessors(node_id):
                continue
            if all(p in guards for p in graph.predecessors(node_id)):
                lines.append(f"    {ref(guard)} -.-> {ref(node_id)}")
    lines.extend(f"    {ref(node_id)}" for node_id in graph.nodes if node_id not in drawn)
    shown = [ids[node.id] for node in pipeline.nodes if node.show]
    if shown:
        lines.append("    classDef shown stroke-width:3px")
        lines.append(f"    class {','.join(shown)} shown")
    return "\n".join(lines) + "\n"
