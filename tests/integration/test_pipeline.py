"""Pipelines on a real Redis and a real (in-process) Celery worker: scheduling by each node's own
dependencies, data flow in declared order, guards, failure policies and ``retry_failed``.

Nodes are ``tests.callables:stage`` calls that sleep a set duration; each outcome carries the
node's own start and end times, and every check compares a node's start with the ends of **its
own** dependencies (never its level's).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from fanflow.client import Client
from fanflow.errors import SpecError
from fanflow.pipeline import Edge, Pipeline, PipelineNode
from fanflow.pipeline.graph import Graph
from fanflow.result import JobResult, JobStatus, OutcomeStatus
from fanflow.spec import AllOrNothing, PyCall
from tests.callables import calls

#: How long after its last dependency ends a node may start (a worker thread picks the message up).
START_SLACK_S = 0.6


def stage(node_id: str, delay: float = 0.0, *, fail: bool = False, **options: Any) -> PipelineNode:
    """A node that sleeps ``delay`` and returns its name and its inputs (``tests.callables:stage``)."""
    kwargs: dict[str, Any] = {"name": node_id, "delay": delay, "fail": fail}
    run = PyCall(function="tests.callables:stage", kwargs=kwargs, pass_inputs=True)
    return PipelineNode(id=node_id, run=run, **options)


def counted(node_id: str, counter_dir: Path, *, failures: int = 0) -> PipelineNode:
    """A node that counts its runs and fails its first ``failures`` runs (``tests.callables:flaky``)."""
    kwargs = {"counter_dir": str(counter_dir), "name": node_id, "failures": failures, "value": node_id}
    return PipelineNode(id=node_id, run=PyCall(function="tests.callables:flaky", kwargs=kwargs))


def edge(node: str, **lists: list[Any]) -> Edge:
    """An edge entry; list items are node ids or nested ``Edge`` entries."""
    built = {
        form: [item if isinstance(item, Edge) else Edge(node=item) for item in items]
        for form, items in lists.items()
    }
    return Edge(node=node, **built)


def run(client: Client, pipeline: Pipeline, timeout: float = 60) -> JobResult:
    return client.submit(pipeline).wait(timeout)


def check_schedule(pipeline: Pipeline, result: JobResult) -> None:
    """Every node started after each of its own dependencies ended, and soon after the last one."""
    graph = Graph(pipeline)
    by_key = {o.key: o for o in result.outcomes}
    first = min(o.started_at for o in result.outcomes if o.started_at is not None)
    for node_id in graph.nodes:
        outcome = by_key[node_id]
        assert outcome.started_at is not None and outcome.finished_at is not None, node_id
        ends = [by_key[d].finished_at for d in graph.dependencies(node_id)]
        ready_at = max((end for end in ends if end is not None), default=first)
        assert outcome.started_at >= ready_at - 0.01, f"{node_id} started before its dependencies ended"
        assert outcome.started_at - ready_at < START_SLACK_S, (
            f"{node_id} started {outcome.started_at - ready_at:.2f}s after its own dependencies ended"
        )


def test_fan_out_then_fan_in_runs_by_dependencies_and_feeds_inputs_in_declared_order(client: Client) -> None:
    pipeline = Pipeline(
        name="fan-out-fan-in",
        nodes=[
            stage("dispatcher", 0.1),
            stage("econ", 0.6),
            stage("env", 0.1),
            stage("social", 0.3),
            stage("synth", 0.05, show=True),
        ],
        edges=[
            edge("dispatcher", children=["econ", "env", "social"]),
            edge("synth", fan_in=["social", "econ", "env"]),
        ],
    )
    result = run(client, pipeline)
    assert result.status is JobStatus.SUCCEEDED, result.error
    check_schedule(pipeline, result)
    synth = result.outcome("synth").output
    assert isinstance(synth, dict)
    assert list(synth["inputs"]) == ["social", "econ", "env"]  # declared order, not completion order
    assert list(synth["inputs"]["econ"]["inputs"]) == ["dispatcher"]  # only its own predecessors
    assert list(result.merged or {}) == ["synth"]  # show: true


def test_staggered_chains_do_not_wait_for_an_unrelated_slow_node(client: Client) -> None:
    # A level-by-level runner takes 1.2 + 1.2 here; by dependencies it is one chain, 1.3.
    pipeline = Pipeline(
        name="staggered",
        nodes=[stage("a1", 1.2), stage("a2", 0.1), stage("b1", 0.1), stage("b2", 1.2)],
        edges=[edge("a1", children=["a2"]), edge("b1", children=["b2"])],
    )
    result = run(client, pipeline)
    assert result.status is JobStatus.SUCCEEDED
    check_schedule(pipeline, result)
    a1, b2 = result.outcome("a1"), result.outcome("b2")
    assert b2.started_at is not None and a1.finished_at is not None
    assert b2.started_at < a1.finished_at - 0.5  # b2 did not wait for a1's level
    starts = [o.started_at for o in result.outcomes if o.started_at]
    ends = [o.finished_at for o in result.outcomes if o.finished_at]
    assert max(ends) - min(starts) < 1.3 + 0.6


def test_a_shape_no_single_canvas_expresses(client: Client) -> None:
    # A -> C, A -> D, B -> D: C waits for A only, D for both.
    pipeline = Pipeline(
        name="non-series-parallel",
        nodes=[stage("A", 0.1), stage("B", 0.8), stage("C", 0.1), stage("D", 0.1)],
        edges=[edge("A", children=["C", "D"]), edge("D", fan_in=["B"])],
    )
    result = run(client, pipeline)
    assert result.status is JobStatus.SUCCEEDED
    check_schedule(pipeline, result)
    c, b = result.outcome("C"), result.outcome("B")
    assert c.finished_at is not None and b.finished_at is not None and c.finished_at < b.finished_at
    d = result.outcome("D").output
    assert isinstance(d, dict) and list(d["inputs"]) == ["A", "B"]


def test_ordered_forms_nested_edges_and_a_node_in_several_places(client: Client) -> None:
    # The tutorial's nested fan-out with a fan-in of its leaves, ordered_children beside children
    # on one edge, and ordered_fan_in beside fan_in.
    nodes = [
        stage(n, 0.15) for n in ("A", "B", "C", "D", "E", "F", "P", "S1", "S2", "X", "Y", "Q1", "Q2", "Z")
    ]
    pipeline = Pipeline(
        name="edge-forms",
        nodes=nodes,
        edges=[
            edge("A", children=[edge("B", children=["D", "E"]), "C"]),
            edge("F", fan_in=["C", "D", "E"]),
            edge("P", children=["X"], ordered_children=["S1", "S2"]),
            edge("Z", fan_in=["X", "Y"], ordered_fan_in=["Q1", "Q2"]),
        ],
    )
    result = run(client, pipeline)
    assert result.status is JobStatus.SUCCEEDED
    check_schedule(pipeline, result)
    by_key = {o.key: o for o in result.outcomes}
    assert by_key["S2"].started_at >= by_key["S1"].finished_at  # type: ignore[operator]
    assert by_key["Q2"].started_at >= by_key["Q1"].finished_at  # type: ignore[operator]
    f, z = result.outcome("F").output, result.outcome("Z").output
    assert isinstance(f, dict) and list(f["inputs"]) == ["C", "D", "E"]
    assert isinstance(z, dict) and list(z["inputs"]) == ["X", "Y", "Q1", "Q2"]
    assert set(result.merged or {}) == {"F", "S2", "Z"}  # no node shows: the sinks


def test_a_guard_that_says_no_blocks_every_other_node(client: Client) -> None:
    guard = PipelineNode(
        id="gate", guard=True, run=PyCall(function="tests.callables:verdict", kwargs={"value": False})
    )
    pipeline = Pipeline(
        name="guarded", nodes=[guard, stage("a"), stage("b")], edges=[edge("a", children=["b"])]
    )
    result = run(client, pipeline)
    assert result.status is JobStatus.BLOCKED
    assert result.blocked_by == "gate"
    assert [o.status for o in result.outcomes] == [
        OutcomeStatus.SUCCEEDED,
        OutcomeStatus.BLOCKED,
        OutcomeStatus.BLOCKED,
    ]
    assert result.outcome("a").error is not None and "gate" in result.outcome("a").error.message  # type: ignore[union-attr]
    assert result.flagged == []  # a decision, not a failure
    result.raise_for_status()


def test_a_guard_that_says_yes_runs_first(client: Client) -> None:
    guard = PipelineNode(
        id="gate", guard=True, run=PyCall(function="tests.callables:verdict", kwargs={"value": True})
    )
    pipeline = Pipeline(name="guarded-yes", nodes=[stage("a", 0.1), guard], edges=[])
    result = run(client, pipeline)
    assert result.status is JobStatus.SUCCEEDED
    check_schedule(pipeline, result)
    assert result.outcome("a").started_at >= result.outcome("gate").finished_at  # type: ignore[operator]


def test_a_guard_that_crashes_is_an_error_not_a_no(client: Client) -> None:
    guard = PipelineNode(
        id="gate", guard=True, run=PyCall(function="tests.callables:verdict", kwargs={"value": "maybe"})
    )
    pipeline = Pipeline(name="guard-crash", nodes=[guard, stage("a")])
    result = run(client, pipeline)
    gate, a = result.outcome("gate"), result.outcome("a")
    assert gate.status is OutcomeStatus.FAILED and gate.error is not None and gate.error.type == "GuardError"
    assert a.status is OutcomeStatus.SKIPPED
    assert result.status is JobStatus.FAILED and result.blocked_by is None


def test_best_effort_skips_a_failed_nodes_descendants_and_finishes_the_rest(client: Client) -> None:
    pipeline = Pipeline(
        name="best-effort",
        nodes=[
            stage("root", 0.05),
            stage("bad", 0.05, fail=True),
            stage("below", 0.05),
            stage("deeper", 0.05),
            stage("good", 0.3),
            stage("join", 0.05),
        ],
        edges=[
            edge("root", children=[edge("bad", children=[edge("below", children=["deeper"])]), "good"]),
            edge("join", fan_in=["good", "below"]),
        ],
    )
    result = run(client, pipeline)
    statuses = {o.key: o.status for o in result.outcomes}
    assert statuses == {
        "root": OutcomeStatus.SUCCEEDED,
        "bad": OutcomeStatus.FAILED,
        "below": OutcomeStatus.SKIPPED,
        "deeper": OutcomeStatus.SKIPPED,
        "good": OutcomeStatus.SUCCEEDED,
        "join": OutcomeStatus.SKIPPED,
    }
    assert result.status is JobStatus.PARTIAL
    below = result.outcome("below").error
    assert below is not None and below.type == "UpstreamFailed" and "'bad'" in below.message


def test_all_or_nothing_cancels_what_has_not_run(client: Client) -> None:
    pipeline = Pipeline(
        name="all-or-nothing",
        failure=AllOrNothing(),
        nodes=[
            stage("bad", 0.05, fail=True),
            stage("slow", 0.5),
            stage("after_slow", 0.05),
            stage("other", 0.05),
        ],
        edges=[edge("slow", children=["after_slow"]), edge("bad", children=["other"])],
    )
    result = run(client, pipeline)
    statuses = {o.key: o.status for o in result.outcomes}
    assert statuses["bad"] is OutcomeStatus.FAILED
    assert statuses["slow"] is OutcomeStatus.SUCCEEDED  # it was running: it finished
    assert statuses["after_slow"] is OutcomeStatus.CANCELLED
    assert statuses["other"] is OutcomeStatus.CANCELLED
    assert result.status is JobStatus.FAILED and result.error is not None and "bad" in result.error.message


def test_retry_failed_reruns_only_failed_and_skipped_nodes_reusing_the_rest(
    client: Client, tmp_path: Path
) -> None:
    nodes = [
        counted("a", tmp_path),
        counted("flaky", tmp_path, failures=1),
        counted("after", tmp_path),
        counted("side", tmp_path),
    ]
    pipeline = Pipeline(
        name="retry", nodes=nodes, edges=[edge("a", children=[edge("flaky", children=["after"]), "side"])]
    )
    handle = client.submit(pipeline)
    first = handle.wait(30)
    assert first.status is JobStatus.PARTIAL
    assert first.outcome("after").status is OutcomeStatus.SKIPPED
    second = handle.retry_failed().wait(30)
    assert second.status is JobStatus.SUCCEEDED, second.error
    assert second.round == 1
    assert {key: calls(str(tmp_path), key) for key in ("a", "flaky", "after", "side")} == {
        "a": 1,
        "flaky": 2,
        "after": 1,
        "side": 1,
    }


def test_templates_see_input_results_and_each_predecessor(client: Client) -> None:
    # A python node's kwargs are not templates: check the rendering through the node's vars instead.
    from fanflow.pipeline.runtime import format_inputs

    assert format_inputs({"a": "x", "b": {"k": 1}}) == '## a\nx\n\n## b\n{\n  "k": 1\n}'


def test_a_pipeline_file_in_either_format_is_refused_before_anything_runs(client: Client) -> None:
    bad = {
        "name": "bad",
        "nodes": [{"id": "a", "run": {"kind": "python", "function": "tests.callables:nope"}}],
        "edges": [],
    }
    with pytest.raises(SpecError, match=r"nodes\.0\.run\.function"):
        client.submit(bad)


def _fanout_node(node_id: str, counter_dir: Path, failing: str | None = None, **fanout: Any) -> PipelineNode:
    """A fan-out node of three counted branches ``x``, ``y``, ``z`` (``failing`` fails its first run)."""
    subtasks = [
        {"key": key, "run": {"kind": "python", "function": "tests.callables:flaky",
                             "kwargs": {"counter_dir": str(counter_dir), "name": f"{node_id}.{key}",
                                        "failures": 1 if key == failing else 0, "value": key.upper()}}}
        for key in ("x", "y", "z")
    ]  # fmt: skip
    spec = {"name": node_id, "subtasks": subtasks, "merge": {"strategy": "key_merge"}, **fanout}
    return PipelineNode.model_validate({"id": node_id, "fanout": spec})


def test_a_fan_out_node_runs_its_branches_as_a_group_and_merges_them(client: Client, tmp_path: Path) -> None:
    pipeline = Pipeline(
        name="fan-out-node",
        nodes=[
            stage("dispatch", 0.2),
            _fanout_node("panel", tmp_path, failing="y", failure={"policy": "best_effort"}),
            stage("report", 0.05, show=True),
        ],
        edges=[edge("dispatch", children=["panel"]), edge("report", fan_in=["panel"])],
    )
    result = run(client, pipeline)
    keys = [o.key for o in result.outcomes]
    assert keys == ["dispatch", "panel.x", "panel.y", "panel.z", "panel", "report"]
    by_key = {o.key: o for o in result.outcomes}
    assert by_key["panel.y"].status is OutcomeStatus.FAILED
    assert by_key["panel"].output == {"x": "X", "z": "Z"}  # its fan-out's merge, without the failed branch
    report = by_key["report"].output
    assert isinstance(report, dict) and report["inputs"] == {"panel": {"x": "X", "z": "Z"}}
    for branch in ("panel.x", "panel.y", "panel.z"):  # after the dispatcher, before the fan-in
        assert by_key[branch].started_at >= by_key["dispatch"].finished_at  # type: ignore[operator]
        assert by_key["panel"].started_at >= by_key[branch].finished_at  # type: ignore[operator]
    assert result.status is JobStatus.PARTIAL and result.flagged == ["panel.y"]

    again = client.get(result.job_id).retry_failed().wait(30)
    assert again.status is JobStatus.SUCCEEDED, again.error
    assert again.outcome("panel").output == {"x": "X", "y": "Y", "z": "Z"}  # merged again, and fed on
    assert calls(str(tmp_path), "panel.y") == 2 and calls(str(tmp_path), "panel.x") == 1


def test_a_fan_out_node_that_fails_its_own_policy_skips_what_follows(client: Client, tmp_path: Path) -> None:
    pipeline = Pipeline(
        name="fan-out-node-fails",
        nodes=[_fanout_node("panel", tmp_path, failing="x"), stage("after")],
        edges=[edge("panel", children=["after"])],
    )
    result = run(client, pipeline)
    panel = result.outcome("panel")
    assert panel.status is OutcomeStatus.FAILED and panel.error is not None
    assert "the fan-out failed" in panel.error.message
    assert result.outcome("after").status is OutcomeStatus.SKIPPED
    assert result.outcome("panel.y").status is OutcomeStatus.SUCCEEDED  # all_or_nothing inside it: ran anyway


def test_live_node_states_tell_pending_from_queued_and_running(client: Client) -> None:
    import time

    pipeline = Pipeline(
        name="live-states",
        nodes=[stage("first", 1.0), stage("second", 0.05), stage("third", 0.05)],
        edges=[edge("first", ordered_children=["second", "third"])],
    )
    handle = client.submit(pipeline)
    deadline = time.monotonic() + 10
    states = handle.branches()
    while states["first"] != "running" and time.monotonic() < deadline:
        time.sleep(0.05)
        states = handle.branches()
    assert states == {"first": "running", "second": "pending", "third": "pending"}
    started = client.store.started_at(handle.job_id)
    assert list(started) == ["first"] and abs(started["first"] - time.time()) < 5
    assert handle.pipeline() == pipeline
    assert handle.wait(30).status is JobStatus.SUCCEEDED
    assert set(handle.branches().values()) == {"succeeded"}
