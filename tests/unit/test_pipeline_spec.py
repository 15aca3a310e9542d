"""Pipeline specs: nodes, edges in the seed syntax, and every graph problem named by its edge path."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from fanflow.errors import SpecError
from fanflow.pipeline import (
    Edge,
    EdgeForm,
    Graph,
    Pipeline,
    PipelineNode,
    declared_links,
    guard_verdict,
    validate_pipeline,
)

PY = {"kind": "python", "function": "tests.callables:echo"}


def node(node_id: str, **extra: Any) -> dict[str, Any]:
    return {"id": node_id, "run": PY, **extra}


def spec(
    nodes: list[str] | list[dict[str, Any]], edges: list[Any] | None = None, **extra: Any
) -> dict[str, Any]:
    listed = [node(item) if isinstance(item, str) else item for item in nodes]
    return {"name": "p", "nodes": listed, "edges": edges or [], **extra}


def error(data: dict[str, Any]) -> SpecError:
    with pytest.raises(SpecError) as raised:
        validate_pipeline(data)
    assert "\n" not in str(raised.value)
    return raised.value


def llm(**extra: Any) -> dict[str, Any]:
    return {"kind": "llm", "model": "openai:gpt-4o-mini", "prompt": "Say {input}", **extra}


# --- nodes ----------------------------------------------------------------------------------------


def test_a_minimal_pipeline_gets_the_documented_defaults() -> None:
    pipeline = validate_pipeline(spec(["a"]))
    assert pipeline.failure.policy == "best_effort"
    assert pipeline.input is None and pipeline.edges == []
    only = pipeline.node("a")
    assert (only.guard, only.show, only.required, only.retry.attempts) == (False, False, False, 1)


def test_a_node_runs_a_task_or_a_whole_fanout_never_both_nor_neither() -> None:
    fanout = {"name": "inner", "subtasks": [{"key": "x", "run": PY}]}
    assert validate_pipeline(spec([{"id": "f", "fanout": fanout}])).node("f").fanout is not None
    for bad in ({"id": "f"}, {"id": "f", "run": PY, "fanout": fanout}):
        found = error(spec([bad]))
        assert "nodes.0: give exactly one of 'run' (a task) or 'fanout'" in str(found)
        assert found.field == "nodes.0"


def test_a_node_takes_the_options_of_a_subtask() -> None:
    options = {
        "vars": {"topic": "EVs"},
        "limits": ["github-api"],
        "timeout_s": 5,
        "retry": {"attempts": 3},
        "success": {"not_empty": True},
        "required": True,
        "metadata": {"team": "x"},
        "show": True,
    }
    built = validate_pipeline(spec([node("a", **options)])).node("a")
    assert built.vars == {"topic": "EVs"} and built.limits == ["github-api"] and built.retry.attempts == 3
    assert built.show and built.required and built.timeout_s == 5


def test_duplicate_node_ids_are_named_with_both_places() -> None:
    found = error(spec(["a", "b", "a"]))
    assert "duplicate node id 'a' at nodes.2.id (first used at nodes.0.id)" in str(found)


def test_a_node_id_must_look_like_a_branch_key() -> None:
    assert error(spec(["bad id"])).field == "nodes.0.id"


@pytest.mark.parametrize("name", ["input", "results", "context", "key"])
def test_vars_cannot_redefine_what_the_pipeline_fills_in(name: str) -> None:
    found = error(spec([node("a", vars={name: 1})]))
    assert "is filled in by fanflow" in str(found) and found.field == "nodes.0.vars"


def test_a_var_cannot_shadow_a_predecessors_output() -> None:
    found = error(spec(["a", node("b", vars={"a": 1})], [{"node": "a", "children": [{"node": "b"}]}]))
    assert found.field == "nodes.1.vars.a"
    assert "'a' is a predecessor of 'b'" in str(found)


def test_failure_is_best_effort_or_all_or_nothing() -> None:
    assert (
        validate_pipeline(spec(["a"], failure={"policy": "all_or_nothing"})).failure.policy
        == "all_or_nothing"
    )
    assert error(spec(["a"], failure={"policy": "quorum", "min_succeeded": 1})).field == "failure"


def test_pipeline_level_options() -> None:
    pipeline = validate_pipeline(
        spec(
            ["a"],
            input="Impact of EVs",
            context={"topic": "EVs"},
            budget={"max_tokens": 100},
            deadline_s=30,
            idempotency_key="k-1",
        )
    )
    assert pipeline.input == "Impact of EVs" and pipeline.budget is not None and pipeline.deadline_s == 30


def test_unknown_fields_are_rejected_at_any_depth_of_the_edges() -> None:
    found = error(spec(["a", "b"], [{"node": "a", "children": [{"node": "b", "childern": []}]}]))
    assert "edges.0.children.0.childern: Extra inputs are not permitted" in str(found)


def test_validate_pipeline_refuses_what_is_not_a_mapping_and_passes_models_through() -> None:
    with pytest.raises(SpecError, match="a pipeline must be a mapping, not list"):
        validate_pipeline([], source="x.yml")  # type: ignore[arg-type]
    pipeline = validate_pipeline(spec(["a"]))
    assert validate_pipeline(pipeline) is pipeline


def test_constructing_an_invalid_pipeline_directly_raises_pydantics_error() -> None:
    with pytest.raises(ValidationError, match="unknown node 'x'"):
        Pipeline(name="p", nodes=[PipelineNode(id="a", run=PY)], edges=[Edge(node="x")])  # type: ignore[arg-type]


# --- guards ---------------------------------------------------------------------------------------


def test_an_llm_guard_gets_a_required_boolean_validation_in_its_output_schema() -> None:
    guard = validate_pipeline(spec([{"id": "g", "guard": True, "run": llm()}])).node("g")
    assert guard.run is not None and guard.run.kind == "llm"
    assert guard.run.output_schema == {
        "type": "object",
        "properties": {"validation": {"type": "boolean"}},
        "required": ["validation"],
    }


def test_a_guards_own_schema_keeps_its_fields_and_gains_the_verdict() -> None:
    schema = {"type": "object", "properties": {"reason": {"type": "string"}}, "required": ["reason"]}
    guard = validate_pipeline(spec([{"id": "g", "guard": True, "run": llm(output_schema=schema)}])).node("g")
    assert guard.run is not None and guard.run.kind == "llm"
    assert guard.run.output_schema == {
        "type": "object",
        "properties": {"reason": {"type": "string"}, "validation": {"type": "boolean"}},
        "required": ["reason", "validation"],
    }


def test_a_non_guard_llm_node_keeps_its_schema_as_written() -> None:
    plain = validate_pipeline(spec([{"id": "a", "run": llm()}])).node("a")
    assert plain.run is not None and plain.run.kind == "llm" and plain.run.output_schema is None


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "object", "properties": {"validation": {"type": "string"}}},
        {"type": "array"},
        {"type": "object", "properties": []},
        {"type": "object", "required": "validation"},
    ],
)
def test_a_guard_schema_that_cannot_carry_a_boolean_verdict_is_refused(schema: dict[str, Any]) -> None:
    found = error(spec([{"id": "g", "guard": True, "run": llm(output_schema=schema)}]))
    assert found.field == "nodes.0.run"


def test_a_fanout_node_cannot_be_a_guard() -> None:
    fanout = {"name": "inner", "subtasks": [{"key": "x", "run": PY}]}
    assert "cannot be a guard" in str(error(spec([{"id": "f", "guard": True, "fanout": fanout}])))


def test_a_guard_cannot_wait_for_a_non_guard_node() -> None:
    found = error(spec(["a", node("g", guard=True)], [{"node": "g", "fan_in": [{"node": "a"}]}]))
    assert found.field == "edges.0.fan_in.0.node"
    assert "guard 'g' cannot wait for non-guard node 'a'" in str(found)


def test_a_guard_may_come_after_another_guard() -> None:
    pipeline = validate_pipeline(
        spec(
            [node("g1", guard=True), node("g2", guard=True), "a"],
            [{"node": "g1", "children": [{"node": "g2"}]}],
        )
    )
    assert pipeline.guards == ["g1", "g2"]


@pytest.mark.parametrize(
    ("output", "verdict"),
    [
        (True, True),
        (False, False),
        ({"validation": False, "reason": "rude"}, False),
        ({"validation": True}, True),
        ({"exit_code": 0, "result": {"validation": False}}, False),
    ],
)
def test_guard_verdicts(output: Any, verdict: bool) -> None:
    assert guard_verdict(output) is verdict


@pytest.mark.parametrize("output", [None, "no", 0, {"validation": "false"}, {"reason": "x"}, [True]])
def test_an_output_without_a_boolean_verdict_is_an_error_not_a_no(output: Any) -> None:
    with pytest.raises(ValueError, match="boolean"):
        guard_verdict(output)


# --- edges ----------------------------------------------------------------------------------------


def test_unknown_node_ids_are_named_by_edge_path_each_one() -> None:
    found = error(
        spec(
            ["dispatcher", "economic_analyst"],
            [
                {
                    "node": "dispatcher",
                    "children": [{"node": "economic_analyst"}, {"node": "economic_analist"}],
                },
                {
                    "node": "synthesizer",
                    "fan_in": [{"node": "economic_analyst", "children": [{"node": "zz"}]}],
                },
            ],
        )
    )
    message = str(found)
    assert found.field == "edges.0.children.1.node"
    assert (
        "edges.0.children.1.node: unknown node 'economic_analist'; did you mean 'economic_analyst'?"
        in message
    )
    assert "edges.1.node: unknown node 'synthesizer'" in message
    assert (
        "edges.1.fan_in.0.children.0.node: unknown node 'zz' (nodes: dispatcher, economic_analyst)" in message
    )


@pytest.mark.parametrize(
    ("edges", "path", "cycle"),
    [
        ([{"node": "a", "children": [{"node": "a"}]}], "edges.0.children.0.node", "a -> a"),
        (
            [{"node": "a", "children": [{"node": "b"}]}, {"node": "a", "fan_in": [{"node": "b"}]}],
            "edges.1.fan_in.0.node",
            "a -> b -> a",
        ),
        (
            [
                {"node": "a", "ordered_children": [{"node": "b"}, {"node": "c"}]},
                {"node": "c", "children": [{"node": "a"}]},
            ],
            "edges.1.children.0.node",
            "a -> b -> c -> a",
        ),
        (
            [
                {"node": "s", "ordered_fan_in": [{"node": "a"}, {"node": "b"}]},
                {"node": "s", "ordered_fan_in": [{"node": "b"}, {"node": "a"}]},
            ],
            "edges.1.ordered_fan_in.1.node",
            "a -> b -> a",
        ),
        (
            [
                {
                    "node": "a",
                    "children": [{"node": "b", "children": [{"node": "c", "children": [{"node": "b"}]}]}],
                }
            ],
            "edges.0.children.0.children.0.children.0.node",
            "b -> c -> b",
        ),
    ],
)
def test_cycles_are_named_with_the_edge_that_closes_them(edges: list[Any], path: str, cycle: str) -> None:
    found = error(spec(["a", "b", "c", "s"], edges))
    assert str(found) == f"{path}: cycle {cycle}"
    assert found.field == path


def test_a_node_listed_twice_in_one_list_is_contradictory() -> None:
    found = error(spec(["p", "a"], [{"node": "p", "children": [{"node": "a"}, {"node": "a"}]}]))
    assert (
        str(found)
        == "edges.0.children.1.node: 'a' is listed twice in children (first at edges.0.children.0.node)"
    )


@pytest.mark.parametrize(
    ("first", "second"),
    [("children", "ordered_children"), ("fan_in", "ordered_fan_in")],
)
def test_a_node_both_parallel_and_sequential_on_one_edge_is_contradictory(first: str, second: str) -> None:
    found = error(
        spec(["p", "a", "b"], [{"node": "p", first: [{"node": "a"}], second: [{"node": "b"}, {"node": "a"}]}])
    )
    assert found.field == f"edges.0.{second}.1.node"
    assert f"'a' is both parallel and sequential on the edge of 'p' (also at edges.0.{first}.0.node)" in str(
        found
    )


def test_a_node_both_before_and_after_the_edges_node_is_contradictory() -> None:
    found = error(
        spec(["p", "a"], [{"node": "p", "children": [{"node": "a"}], "ordered_fan_in": [{"node": "a"}]}])
    )
    assert found.field == "edges.0.ordered_fan_in.0.node"
    assert "'a' is both before and after 'p' on one edge (also at edges.0.children.0.node)" in str(found)


def test_a_node_in_several_places_is_intended() -> None:
    edges = [
        {"node": "d", "children": [{"node": "a"}, {"node": "b"}]},
        {"node": "s", "fan_in": [{"node": "a"}, {"node": "b"}]},
        {"node": "d", "children": [{"node": "a"}]},
    ]
    pipeline = validate_pipeline(spec(["d", "a", "b", "s"], edges))
    assert Graph(pipeline).predecessors("s") == ("a", "b")


def test_declared_links_walk_every_form_in_declared_order() -> None:
    edge = Edge.model_validate(
        {
            "node": "x",
            "children": [{"node": "c1"}],
            "fan_in": [{"node": "f1", "fan_in": [{"node": "deep"}]}],
            "ordered_children": [{"node": "o1"}, {"node": "o2"}],
            "ordered_fan_in": [{"node": "i1"}, {"node": "i2"}],
        }
    )
    links = [
        (link.source, link.target, link.form, link.path, link.sequence) for link in declared_links([edge])
    ]
    assert links == [
        ("x", "c1", EdgeForm.CHILDREN, "edges.0.children.0.node", False),
        ("f1", "x", EdgeForm.FAN_IN, "edges.0.fan_in.0.node", False),
        ("deep", "f1", EdgeForm.FAN_IN, "edges.0.fan_in.0.fan_in.0.node", False),
        ("x", "o1", EdgeForm.ORDERED_CHILDREN, "edges.0.ordered_children.0.node", False),
        ("o1", "o2", EdgeForm.ORDERED_CHILDREN, "edges.0.ordered_children.1.node", True),
        ("i1", "x", EdgeForm.ORDERED_FAN_IN, "edges.0.ordered_fan_in.0.node", False),
        ("i1", "i2", EdgeForm.ORDERED_FAN_IN, "edges.0.ordered_fan_in.1.node", True),
        ("i2", "x", EdgeForm.ORDERED_FAN_IN, "edges.0.ordered_fan_in.1.node", False),
    ]


def test_a_pipeline_survives_the_wire_with_the_same_graph() -> None:
    edges = [
        {"node": "s", "ordered_fan_in": [{"node": "b"}, {"node": "a"}], "fan_in": [{"node": "c"}]},
        {"node": "g", "children": [{"node": "h"}]},
    ]
    guards = [{"id": "g", "guard": True, "run": llm()}, node("h", guard=True)]
    pipeline = validate_pipeline(spec(["a", "b", "c", "s", *guards], edges))
    again = validate_pipeline(json.loads(json.dumps(pipeline.model_dump(mode="json"))))
    assert again == pipeline
    first, second = Graph(pipeline), Graph(again)
    assert [first.predecessors(n) for n in first.nodes] == [second.predecessors(n) for n in second.nodes]
    assert first.predecessors("s") == ("c", "b", "a")


def test_a_pipeline_file_in_fanflows_own_format_loads(tmp_path: Path) -> None:
    from fanflow.pipeline import is_pipeline_data, load_pipeline

    path = tmp_path / "chain.yaml"
    path.write_text(
        "nodes:\n"
        "  - {id: a, run: {kind: python, function: 'tests.callables:echo', kwargs: {value: 1}}}\n"
        "  - {id: b, run: {kind: python, function: 'tests.callables:echo', kwargs: {value: 2}}}\n"
        "edges:\n  - {node: a, children: [{node: b}]}\n"
    )
    loaded = load_pipeline(path)
    assert loaded.pipeline.name == "chain" and loaded.providers == {}
    assert [n.id for n in loaded.pipeline.nodes] == ["a", "b"]
    assert is_pipeline_data({"nodes": [], "edges": []}) and not is_pipeline_data({"subtasks": []})
