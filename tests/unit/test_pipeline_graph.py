"""The dependency graph: every edge form and their combinations, inputs in declared order, guards,
and the schedule fanflow runs (critical path) against the tutorial runner's levels."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from fanflow.pipeline import EdgeForm, Graph, validate_pipeline

PY = {"kind": "python", "function": "tests.callables:echo"}


def graph(edges: Any, *, nodes: list[str] | None = None, guards: tuple[str, ...] = ()) -> Graph:
    """A graph of python nodes; ``edges`` as the tutorial writes them (YAML text) or as a list.

    Nodes are every id the edges name (in order of first mention) unless ``nodes`` says otherwise.
    """
    listed = yaml.safe_load(edges)["edges"] if isinstance(edges, str) else edges
    ids = list(nodes or [])
    stack = list(reversed(listed))
    while stack:
        entry = stack.pop()
        if entry["node"] not in ids and nodes is None:
            ids.append(entry["node"])
        forms = ("children", "fan_in", "ordered_children", "ordered_fan_in")
        stack.extend(reversed([nested for form in forms for nested in entry.get(form, [])]))
    ids.extend(g for g in guards if g not in ids)
    spec = {"name": "t", "nodes": [{"id": i, "run": PY, "guard": i in guards} for i in ids], "edges": listed}
    return Graph(validate_pipeline(spec))


# The tutorial's own edge snippets, verbatim (examples 3, 4, 5, 7, 8).
FAN_OUT_FAN_IN = """
edges:
  - node: "dispatcher"
    children:
      - node: "economic_analyst"
      - node: "environmental_analyst"
      - node: "social_analyst"
  - node: "synthesizer"
    fan_in:
      - node: "economic_analyst"
      - node: "environmental_analyst"
      - node: "social_analyst"
"""
NESTED_FAN_OUT = """
edges:
  - node: "A"
    children:
      - node: "B"
        children:          # B fans out to D and E after B completes
          - node: "D"
          - node: "E"
      - node: "C"
"""
FAN_IN_NESTED = """
edges:
  - node: "A"
    children:
      - node: "B"
        children:
          - node: "D"
          - node: "E"
      - node: "C"
  - node: "F"
    fan_in:
      - node: "C"
      - node: "D"
      - node: "E"    # F waits for the leaf nodes, not just B
"""
ORDERED_CHILDREN = """
edges:
  - node: "dispatcher"
    ordered_children:
      - node: "step_1"
      - node: "step_2"
      - node: "step_3"
"""
CHILDREN_AND_ORDERED_CHILDREN = """
edges:
  - node: "parent"
    children:                # A and B run in parallel
      - node: "A"
      - node: "B"
    ordered_children:        # C then D run sequentially
      - node: "C"
      - node: "D"
"""
ORDERED_FAN_IN = """
edges:
  - node: "synthesizer"
    ordered_fan_in:
      - node: "collector"
      - node: "processor"
      - node: "validator"
"""
FAN_IN_AND_ORDERED_FAN_IN = """
edges:
  - node: "synthesizer"
    fan_in:                  # X and Y run in parallel, both feed synthesizer
      - node: "X"
      - node: "Y"
    ordered_fan_in:          # A then B sequentially, both feed synthesizer
      - node: "A"
      - node: "B"
"""


# --- every edge form ------------------------------------------------------------------------------


def test_children_each_depend_on_the_parent_in_parallel() -> None:
    built = graph(FAN_OUT_FAN_IN)
    analysts = ("economic_analyst", "environmental_analyst", "social_analyst")
    assert built.successors("dispatcher") == analysts
    assert all(built.predecessors(a) == ("dispatcher",) for a in analysts)


def test_fan_in_waits_for_every_listed_node_and_a_node_in_two_places_is_both() -> None:
    built = graph(FAN_OUT_FAN_IN)
    assert built.predecessors("synthesizer") == (
        "economic_analyst",
        "environmental_analyst",
        "social_analyst",
    )
    assert built.successors("economic_analyst") == ("synthesizer",)
    assert built.levels() == (
        ("dispatcher",),
        ("economic_analyst", "environmental_analyst", "social_analyst"),
        ("synthesizer",),
    )


def test_nested_children_fan_out_from_the_child() -> None:
    built = graph(NESTED_FAN_OUT)
    assert built.predecessors("D") == ("B",) and built.predecessors("E") == ("B",)
    assert built.predecessors("B") == ("A",) and built.predecessors("C") == ("A",)
    assert built.successors("A") == ("B", "C")
    assert built.levels() == (("A",), ("B", "C"), ("D", "E"))


def test_fan_in_reaches_nested_nodes_and_not_their_parent() -> None:
    built = graph(FAN_IN_NESTED)
    assert built.predecessors("F") == ("C", "D", "E")
    assert "B" not in built.dependencies("F")
    assert built.descendants("B") == ("D", "E", "F")


def test_ordered_children_chain_after_the_parent() -> None:
    built = graph(ORDERED_CHILDREN)
    assert built.predecessors("step_1") == ("dispatcher",)
    assert built.predecessors("step_2") == ("step_1",)
    assert built.predecessors("step_3") == ("step_2",)
    assert built.link("step_1", "step_2") is not None
    assert built.levels() == (("dispatcher",), ("step_1",), ("step_2",), ("step_3",))


def test_children_and_ordered_children_on_one_edge_are_independent_sets() -> None:
    built = graph(CHILDREN_AND_ORDERED_CHILDREN)
    assert built.predecessors("A") == ("parent",) and built.predecessors("B") == ("parent",)
    assert built.predecessors("C") == ("parent",) and built.predecessors("D") == ("C",)
    assert built.levels() == (("parent",), ("A", "B", "C"), ("D",))


def test_ordered_fan_in_runs_one_after_another_and_every_one_feeds_the_aggregator() -> None:
    built = graph(ORDERED_FAN_IN)
    assert built.predecessors("processor") == ("collector",)
    assert built.predecessors("validator") == ("processor",)
    assert built.predecessors("synthesizer") == ("collector", "processor", "validator")
    assert built.topological_order() == ("collector", "processor", "validator", "synthesizer")


def test_fan_in_and_ordered_fan_in_on_one_edge_act_on_different_sets() -> None:
    built = graph(FAN_IN_AND_ORDERED_FAN_IN)
    assert built.predecessors("synthesizer") == ("X", "Y", "A", "B")
    assert built.predecessors("B") == ("A",) and built.predecessors("X") == ()
    assert built.levels() == (("X", "Y", "A"), ("B",), ("synthesizer",))


def test_every_form_on_one_edge_with_nesting_inside_each() -> None:
    built = graph(
        [
            {
                "node": "x",
                "children": [{"node": "c", "children": [{"node": "cc"}]}],
                "fan_in": [{"node": "f", "fan_in": [{"node": "ff"}]}],
                "ordered_children": [{"node": "o1", "ordered_children": [{"node": "oo"}]}, {"node": "o2"}],
                "ordered_fan_in": [{"node": "i1"}, {"node": "i2", "children": [{"node": "ic"}]}],
            }
        ]
    )
    assert built.predecessors("x") == ("f", "i1", "i2")
    assert built.predecessors("cc") == ("c",) and built.predecessors("f") == ("ff",)
    assert built.predecessors("oo") == ("o1",) and built.predecessors("o2") == ("o1",)
    assert built.predecessors("i2") == ("i1",) and built.predecessors("ic") == ("i2",)
    assert built.successors("x") == ("c", "o1")


def test_entries_listed_in_fan_in_apply_their_own_children() -> None:
    built = graph([{"node": "s", "fan_in": [{"node": "a", "children": [{"node": "b"}]}]}])
    assert built.predecessors("s") == ("a",) and built.predecessors("b") == ("a",)


# --- declared order -------------------------------------------------------------------------------


def test_inputs_come_in_declared_order_not_node_order_nor_name_order() -> None:
    built = graph(
        [{"node": "s", "fan_in": [{"node": "z"}, {"node": "a"}, {"node": "m"}]}], nodes=["a", "m", "s", "z"]
    )
    assert built.predecessors("s") == ("z", "a", "m")
    assert built.levels() == (("a", "m", "z"), ("s",))  # levels list nodes in declaration order


def test_inputs_from_several_edges_come_in_walking_order_first_declaration_wins() -> None:
    built = graph(
        [
            {"node": "b", "children": [{"node": "s"}]},
            {"node": "s", "fan_in": [{"node": "a"}, {"node": "b"}]},
            {"node": "c", "children": [{"node": "s", "fan_in": [{"node": "d"}]}]},
        ]
    )
    assert built.predecessors("s") == ("b", "a", "c", "d")
    link = built.link("b", "s")
    assert link is not None and link.path == "edges.0.children.0.node" and link.form is EdgeForm.CHILDREN
    assert len(built.links()) == 4


def test_nodes_no_edge_names_still_run_as_roots() -> None:
    built = graph(ORDERED_CHILDREN, nodes=["lonely", "dispatcher", "step_1", "step_2", "step_3"])
    assert built.roots() == ("lonely", "dispatcher")
    assert built.sinks() == ("lonely", "step_3")


def test_topological_order_prefers_the_first_declared_ready_node() -> None:
    built = graph(FAN_IN_NESTED)
    assert built.topological_order() == ("A", "B", "D", "E", "C", "F")


def test_unknown_ids_raise_key_error() -> None:
    built = graph(NESTED_FAN_OUT)
    for query in (built.predecessors, built.successors, built.dependencies, built.guarded_by, built.is_guard):
        with pytest.raises(KeyError):
            query("nope")


def test_a_shape_no_single_canvas_expresses() -> None:
    built = graph(
        [
            {"node": "A", "children": [{"node": "C"}, {"node": "D"}]},
            {"node": "B", "children": [{"node": "D"}]},
        ]
    )
    assert built.predecessors("D") == ("A", "B") and built.predecessors("C") == ("A",)
    assert built.critical_path({"A": 1, "B": 5, "C": 1, "D": 1}) == 6


def test_template_names_are_the_pipeline_variables_and_the_identifier_named_inputs() -> None:
    built = graph([{"node": "s", "fan_in": [{"node": "econ"}, {"node": "env-1"}]}])
    assert built.template_names("s") == {"context", "key", "input", "results", "econ"}
    assert built.template_names("econ") == {"context", "key", "input", "results"}


# --- guards ---------------------------------------------------------------------------------------


def test_a_guard_precedes_every_non_guard_node_without_an_edge() -> None:
    # The tutorial's example 6: the guard is in no edge at all.
    built = graph([{"node": "analyst_a"}, {"node": "analyst_b"}], guards=("input_guard",))
    assert built.guards == ("input_guard",)
    assert built.roots() == ("input_guard",)
    assert built.guarded_by("analyst_a") == ("input_guard",) and built.guarded_by("input_guard") == ()
    assert built.dependencies("analyst_b") == ("input_guard",)
    assert built.predecessors("analyst_b") == ()  # a guard orders; it feeds only what it is linked to
    assert built.dependents("input_guard") == ("analyst_a", "analyst_b")
    assert built.levels() == (("input_guard",), ("analyst_a", "analyst_b"))


def test_a_guard_precedes_fan_out_children_and_blocks_everything_downstream() -> None:
    built = graph(FAN_OUT_FAN_IN, guards=("g",))
    assert built.dependencies("economic_analyst") == ("dispatcher", "g")
    assert built.descendants("g") == (
        "dispatcher",
        "economic_analyst",
        "environmental_analyst",
        "social_analyst",
        "synthesizer",
    )
    assert built.is_guard("g") and not built.is_guard("dispatcher")


def test_a_guard_linked_into_a_node_is_also_its_input() -> None:
    built = graph([{"node": "s", "fan_in": [{"node": "g"}, {"node": "a"}]}], guards=("g",))
    assert built.predecessors("s") == ("g", "a")
    assert built.dependencies("s") == ("g", "a")
    assert built.dependencies("a") == ("g",)


def test_guards_run_in_parallel_unless_an_edge_orders_them() -> None:
    parallel = graph([{"node": "a"}], guards=("g1", "g2"))
    assert parallel.levels() == (("g1", "g2"), ("a",))
    chained = graph([{"node": "g1", "children": [{"node": "g2"}]}, {"node": "a"}], guards=("g1", "g2"))
    assert chained.levels() == (("g1",), ("g2",), ("a",))
    assert chained.dependencies("a") == ("g1", "g2")


# --- schedules ------------------------------------------------------------------------------------


def test_staggered_chains_levels_take_13_the_critical_path_7() -> None:
    # Two chains, long-then-short beside short-then-long: every level waits for its long node.
    built = graph(
        [{"node": "a1", "ordered_children": [{"node": "a2"}]}, {"node": "b1", "children": [{"node": "b2"}]}]
    )
    durations = {"a1": 6.5, "a2": 0.5, "b1": 0.5, "b2": 6.5}
    assert built.levels() == (("a1", "b1"), ("a2", "b2"))
    assert built.level_makespan(durations) == 13
    assert built.critical_path(durations) == 7


def test_the_critical_path_is_the_longest_chain_of_dependencies() -> None:
    built = graph(FAN_IN_NESTED)
    durations = {"A": 1, "B": 2, "C": 10, "D": 3, "E": 1, "F": 1}
    assert built.critical_path(durations) == 12  # A, C, F
    assert built.level_makespan(durations) == 1 + 10 + 3 + 1


def test_guards_of_one_level_run_one_after_another_in_the_level_schedule() -> None:
    built = graph([{"node": "a"}], guards=("g1", "g2"))
    durations = {"g1": 1, "g2": 2, "a": 4}
    assert built.level_makespan(durations) == 7
    assert built.critical_path(durations) == 6


@pytest.mark.parametrize(
    ("durations", "message"),
    [
        ({"a": 1}, "no duration for node 'b'"),
        ({"a": 1, "b": -1}, "must be a finite number >= 0"),
        ({"a": 1, "b": float("nan")}, "must be a finite number >= 0"),
    ],
)
def test_durations_are_checked(durations: dict[str, float], message: str) -> None:
    built = graph([{"node": "a", "children": [{"node": "b"}]}])
    with pytest.raises(ValueError, match=message):
        built.critical_path(durations)
    with pytest.raises(ValueError, match=message):
        built.level_makespan(durations)
