"""Pipelines drawn as Mermaid flowcharts, the way the seed tutorial draws them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fanflow.pipeline import Pipeline, load_graph, to_mermaid, validate_pipeline

PY = {"kind": "python", "function": "tests.callables:echo"}
TUTORIAL = Path(__file__).resolve().parents[2] / "examples" / "tutorial"


def pipeline(nodes: list[Any], edges: list[Any]) -> Pipeline:
    listed = [{"id": n, "run": PY} if isinstance(n, str) else n for n in nodes]
    return validate_pipeline({"name": "p", "nodes": listed, "edges": edges})


def test_the_tutorials_fan_out_fan_in_is_drawn_as_the_tutorial_draws_it() -> None:
    assert to_mermaid(load_graph(TUTORIAL / "03_fan_out_fan_in.yml").pipeline) == (
        "flowchart LR\n"
        "    dispatcher[dispatcher] --> economic_analyst[economic_analyst]\n"
        "    dispatcher --> environmental_analyst[environmental_analyst]\n"
        "    dispatcher --> social_analyst[social_analyst]\n"
        "    economic_analyst --> synthesizer[synthesizer]\n"
        "    environmental_analyst --> synthesizer\n"
        "    social_analyst --> synthesizer\n"
        "    classDef shown stroke-width:3px\n"
        "    class synthesizer shown\n"
    )


def test_ordered_links_are_labelled_then() -> None:
    drawn = to_mermaid(
        pipeline(
            ["d", "s1", "s2", "c", "p", "agg"],
            [
                {"node": "d", "ordered_children": [{"node": "s1"}, {"node": "s2"}]},
                {"node": "agg", "ordered_fan_in": [{"node": "c"}, {"node": "p"}]},
            ],
        )
    )
    assert drawn == (
        "flowchart LR\n"
        "    d[d] --> s1[s1]\n"
        "    s1 -->|then| s2[s2]\n"
        "    c[c] --> agg[agg]\n"
        "    c -->|then| p[p]\n"
        "    p --> agg\n"
    )


def test_guards_are_hexagons_with_dotted_arrows_to_what_nothing_else_precedes() -> None:
    drawn = to_mermaid(
        pipeline(
            [{"id": "input_guard", "run": PY, "guard": True}, "a", "b", "c"],
            [{"node": "a", "children": [{"node": "c"}]}, {"node": "b"}],
        )
    )
    assert drawn == (
        "flowchart LR\n    a[a] --> c[c]\n    input_guard{{input_guard}} -.-> a\n    input_guard -.-> b[b]\n"
    )


def test_a_guard_linked_by_an_edge_is_drawn_once_as_a_link() -> None:
    drawn = to_mermaid(
        pipeline([{"id": "g", "run": PY, "guard": True}, "a"], [{"node": "g", "children": [{"node": "a"}]}])
    )
    assert drawn == "flowchart LR\n    g{{g}} --> a[a]\n"


def test_fanout_nodes_lone_nodes_and_repeated_links() -> None:
    fanout = {"name": "inner", "subtasks": [{"key": "x", "run": PY}]}
    drawn = to_mermaid(
        pipeline(
            [{"id": "many", "fanout": fanout}, "after", "alone"],
            [
                {"node": "many", "children": [{"node": "after"}]},
                {"node": "after", "fan_in": [{"node": "many"}]},
            ],
        )
    )
    assert drawn == "flowchart LR\n    many[[many]] --> after[after]\n    alone[alone]\n"


def test_ids_mermaid_cannot_take_get_generated_ids_and_keep_their_names() -> None:
    drawn = to_mermaid(
        pipeline(
            ["end", "web-search", "id7", "v1.2"], [{"node": "end", "children": [{"node": "web-search"}]}]
        )
    )
    assert drawn == ('flowchart LR\n    id0["end"] --> id1["web-search"]\n    id2[id7]\n    id3["v1.2"]\n')
