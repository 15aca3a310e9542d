"""The pipeline's tree view (shape, states, timings, errors) and the outputs shown to the user."""

from __future__ import annotations

from typing import Any

import yaml
from rich.text import Text
from rich.tree import Tree

from fanflow.pipeline import Pipeline, validate_pipeline
from fanflow.pipeline.view import node_tree, pipeline_view, shown_outputs, tree_text
from fanflow.result import ErrorInfo, JobResult, JobStatus, SubtaskOutcome
from tests.unit.test_pipeline_graph import FAN_OUT_FAN_IN

PY = {"kind": "python", "function": "tests.callables:echo"}


def pipeline(
    nodes: list[str], edges: str | list[Any], *, guards: tuple[str, ...] = (), show: tuple[str, ...] = ()
) -> Pipeline:
    """A pipeline of python nodes named ``nodes`` (declaration order), edges as YAML text or a list."""
    listed = yaml.safe_load(edges)["edges"] if isinstance(edges, str) else edges
    specs = [{"id": i, "run": PY, "guard": i in guards, "show": i in show} for i in nodes]
    return validate_pipeline({"name": "t", "nodes": specs, "edges": listed})


def lines(text: str) -> list[str]:
    return text.rstrip("\n").split("\n")


def outcome(key: str, status: str, **fields: Any) -> SubtaskOutcome:
    return SubtaskOutcome.model_validate({"key": key, "status": status, **fields})


ANALYSTS = ["dispatcher", "economic_analyst", "environmental_analyst", "social_analyst", "synthesizer"]


# --- shape ----------------------------------------------------------------------------------------


def test_a_fan_in_hangs_under_its_first_input_and_names_the_others() -> None:
    assert lines(tree_text(pipeline(ANALYSTS, FAN_OUT_FAN_IN), {})) == [
        "pipeline t",
        "└── dispatcher  pending",
        "    ├── economic_analyst  pending",
        "    │   └── synthesizer  pending  ← also waits for environmental_analyst, social_analyst",
        "    ├── environmental_analyst  pending",
        "    └── social_analyst  pending",
    ]


def test_a_diamond_joins_under_the_first_declared_input_not_the_first_declared_node() -> None:
    edges = [
        {"node": "A", "children": [{"node": "B"}, {"node": "C"}]},
        {"node": "D", "fan_in": [{"node": "C"}, {"node": "B"}]},
    ]
    assert lines(tree_text(pipeline(["A", "B", "C", "D"], edges), {})) == [
        "pipeline t",
        "└── A  pending",
        "    ├── B  pending",
        "    └── C  pending",
        "        └── D  pending  ← also waits for B",
    ]


def test_a_dag_that_is_not_series_parallel_shows_each_node_once() -> None:
    # A -> C, A -> D, B -> D: no nesting of series and parallel blocks draws it
    edges = [
        {"node": "A", "children": [{"node": "C"}, {"node": "D"}]},
        {"node": "D", "fan_in": [{"node": "B"}]},
    ]
    assert lines(tree_text(pipeline(["A", "B", "C", "D"], edges), {})) == [
        "pipeline t",
        "├── A  pending",
        "│   ├── C  pending",
        "│   └── D  pending  ← also waits for B",
        "└── B  pending",
    ]


def test_children_are_in_topological_order_and_unlinked_nodes_are_roots() -> None:
    edges = [{"node": "p", "ordered_children": [{"node": "s1"}, {"node": "s2"}]}]
    assert lines(tree_text(pipeline(["s2", "lone", "s1", "p"], edges), {})) == [
        "pipeline t",
        "├── lone  pending",
        "└── p  pending",
        "    └── s1  pending",
        "        └── s2  pending",
    ]


def test_guards_come_first_and_their_implied_precedence_is_said_once() -> None:
    edges = [{"node": "a", "children": [{"node": "b"}]}]
    built = pipeline(["a", "b", "c", "g"], edges, guards=("g",))
    assert lines(tree_text(built, {"g": "succeeded"})) == [
        "pipeline t  (every node waits for g)",
        "└── g  guard  succeeded",
        "    ├── a  pending",
        "    │   └── b  pending",
        "    └── c  pending",
    ]


def test_a_node_without_inputs_under_several_guards_names_the_other_guards() -> None:
    built = pipeline(["a", "g1", "g2"], [], guards=("g1", "g2"))
    assert lines(tree_text(built, {})) == [
        "pipeline t  (every node waits for g1, g2)",
        "├── g1  guard  pending",
        "│   └── a  pending  ← also waits for g2",
        "└── g2  guard  pending",
    ]


def test_a_fan_out_node_is_marked() -> None:
    fanout = {"name": "inner", "subtasks": [{"key": "x", "run": PY}]}
    built = validate_pipeline({"name": "t", "nodes": [{"id": "f", "fanout": fanout}]})
    states = {"f": "running", "f.x": "succeeded"}
    assert lines(tree_text(built, states)) == ["pipeline t", "└── f  fan-out  running  (1/1 branches done)"]


# --- states, timings, errors ----------------------------------------------------------------------


def test_states_timings_and_errors_appear_on_each_line() -> None:
    nodes = ["g", "a", "b", "c", "d", "e", "f"]
    edges = [{"node": "a", "children": [{"node": n} for n in ("b", "c", "d", "e", "f")]}]
    built = pipeline(nodes, edges, guards=("g",))
    # outcomes are final: a running node's start comes from whoever knows it (none here but this)
    running: dict[str, Any] = {"key": "d", "started_at": 230.0}
    outcomes = {
        "g": outcome("g", "succeeded", started_at=100.0, finished_at=100.25),
        "a": outcome("a", "succeeded", started_at=100.5, finished_at=225.0),
        "b": outcome("b", "failed", started_at=226.0, finished_at=238.5,
                     error=ErrorInfo(type="ValueError", message="bad " * 40)),
        "c": outcome("c", "skipped",
                     error=ErrorInfo(type="UpstreamFailed", message="skipped: upstream node 'b' failed")),
        "d": SubtaskOutcome.model_construct(**running),
        "e": outcome("e", "cancelled", started_at=226.0, finished_at=227.0),
    }  # fmt: skip
    states = {"b": "failed", "c": "skipped", "d": "running", "f": "queued"}  # g, a, e: from outcomes
    text = lines(tree_text(built, states, outcomes, now=240.0, width=200))
    assert text[1] == "└── g  guard  succeeded  0.25s"
    assert text[2] == "    └── a  succeeded  2m04s"
    failed = (
        "        ├── b  failed  12.5s  ValueError: " + ("bad " * 40)[: 80 - len("ValueError: ") - 1] + "…"
    )
    assert text[3] == failed
    assert text[4] == "        ├── c  skipped  skipped: upstream node 'b' failed"
    assert text[5] == "        ├── d  running  10.0s"
    assert text[6] == "        ├── e  cancelled  1.00s"
    assert text[7] == "        └── f  queued"


def test_a_blocked_node_says_which_guard_blocked_it() -> None:
    built = pipeline(["g", "a"], [], guards=("g",))
    states = {"g": "succeeded", "a": "blocked"}
    outcomes = {"a": outcome("a", "blocked", error=ErrorInfo(type="Blocked", message="blocked by guard 'g'"))}
    assert lines(tree_text(built, states, outcomes))[2] == "    └── a  blocked  blocked by guard 'g'"


def test_each_state_is_coloured_and_an_unknown_state_is_shown_as_it_is() -> None:
    built = pipeline(["a", "b", "c"], [])
    tree = node_tree(built, {"a": "failed", "b": "blocked", "c": "paused"})
    assert isinstance(tree, Tree)

    def state_style(index: int, state: str) -> str:
        label = tree.children[index].label
        assert isinstance(label, Text)
        start = label.plain.index(f"  {state}")
        return next((str(span.style) for span in label.spans if span.start == start), "")

    assert state_style(0, "failed") == "red"
    assert state_style(1, "blocked") == "magenta"
    assert state_style(2, "paused") == ""


def test_the_live_view_is_the_tree_or_counts_for_a_big_pipeline() -> None:
    small = pipeline(["a", "b"], [])
    assert isinstance(pipeline_view(small, {"a": "running"}, {}), Tree)
    big = pipeline([f"n{i}" for i in range(50)], [])
    view = pipeline_view(big, {"n0": "running", "n1": "succeeded", "n2": "odd"}, {})
    assert isinstance(view, Text)
    assert view.plain == "nodes: 47 pending, 1 running, 1 succeeded, 1 odd"


# --- shown outputs --------------------------------------------------------------------------------


def result_of(*outcomes: SubtaskOutcome) -> JobResult:
    return JobResult(job_id="j", name="t", status=JobStatus.PARTIAL, outcomes=list(outcomes))


def test_shown_outputs_are_the_succeeded_show_nodes_in_declaration_order() -> None:
    built = pipeline(ANALYSTS, FAN_OUT_FAN_IN, show=("social_analyst", "economic_analyst", "synthesizer"))
    result = result_of(  # completion order, not declaration order
        outcome("synthesizer", "failed"),
        outcome("social_analyst", "succeeded", output={"score": 3, "note": "é"}),
        outcome("economic_analyst", "succeeded", output="growth"),
        outcome("dispatcher", "succeeded", output="not shown"),
    )
    assert shown_outputs(built, result) == (
        '\n[economic_analyst]\ngrowth\n[social_analyst]\n{\n  "score": 3,\n  "note": "é"\n}'
    )


def test_without_show_nodes_the_sinks_are_shown() -> None:
    edges = [
        {"node": "A", "children": [{"node": "C"}, {"node": "D"}]},
        {"node": "D", "fan_in": [{"node": "B"}]},
    ]
    built = pipeline(["A", "B", "C", "D"], edges)
    result = result_of(
        outcome("A", "succeeded", output="a"),
        outcome("B", "succeeded", output="b"),
        outcome("D", "succeeded", output=["d"]),
        outcome("C", "succeeded", output="c"),
    )
    assert shown_outputs(built, result) == '\n[C]\nc\n[D]\n[\n  "d"\n]'
    assert shown_outputs(built, result_of(outcome("C", "failed"))) == ""


def test_a_running_node_shows_how_long_its_delivery_has_run() -> None:
    built = validate_pipeline({"name": "t", "nodes": [{"id": "a", "run": PY}]})
    text = tree_text(built, {"a": "running"}, {}, now=100.0, started={"a": 97.5})
    assert lines(text) == ["pipeline t", "└── a  running  2.50s"]
