"""Pipeline specs: nodes (a task or a whole fan-out each) joined by edges in the seed tutorial's syntax.

Edges (``node`` plus any of ``children``, ``fan_in``, ``ordered_children``, ``ordered_fan_in``,
nested to any depth, several on one edge) declare *links*: ``source`` finishes before ``target``
starts, and ``source``'s output is one of ``target``'s inputs. For an edge on node ``X``:

- ``children: [A, B]`` -- ``X -> A``, ``X -> B`` (A and B in parallel);
- ``fan_in: [A, B]`` -- ``A -> X``, ``B -> X``;
- ``ordered_children: [A, B, C]`` -- ``X -> A -> B -> C``;
- ``ordered_fan_in: [A, B, C]`` -- ``A -> B -> C`` and ``A -> X``, ``B -> X``, ``C -> X`` (each
  runs after the previous one, and all of them feed ``X``);
- a listed entry is an edge itself: its own lists apply to the listed node.

A node may appear in several places (launched by one edge, awaited by another): its links are the
union of every declaration. Every node of ``nodes`` runs, whether or not an edge names it.

A node's inputs are its link sources **in declared order**: the order of a pre-order walk of
``edges`` (an edge's own ``node``, then its lists in the order ``children``, ``fan_in``,
``ordered_children``, ``ordered_fan_in``, each entry before what is nested in it), first
declaration wins. The order never depends on completion order, or on the key order of the file.

A **guard** node's output carries a boolean verdict (``validation``). As in the tutorial, every
guard precedes every non-guard node without any edge saying so; a guard may itself come after
other guards, never after a non-guard node.

Refused before anything runs, each error naming the edge entry by its path
(``edges.0.children.1.node``): an unknown node id; a cycle (``a -> b -> a``); a guard declared to
wait for a non-guard node; and contradictory nesting -- a node listed twice in one list, a node
both parallel (``children`` / ``fan_in``) and sequential (``ordered_children`` /
``ordered_fan_in``) in the same role on one edge, or both before and after the edge's node.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    StringConstraints,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from fanflow.errors import SpecError
from fanflow.executors.llm.providers import ProviderConfig
from fanflow.spec import (
    RESERVED_VARS,
    AllOrNothing,
    BestEffort,
    BranchKey,
    Budget,
    FanOut,
    LLMCall,
    RetryPolicy,
    SuccessCriteria,
    TaskSpec,
    TemplateName,
    check_own_vars,
    format_validation_error,
)

__all__ = [
    "GUARD_VERDICT",
    "PIPELINE_VARS",
    "Edge",
    "EdgeForm",
    "Link",
    "Pipeline",
    "PipelineFailure",
    "PipelineNode",
    "declared_links",
    "guard_verdict",
    "validate_pipeline",
]

#: The property of a guard's output that carries its verdict.
GUARD_VERDICT = "validation"
#: Template variables a pipeline fills in itself (besides each predecessor's id): a node's
#: ``vars`` cannot redefine them.
PIPELINE_VARS = frozenset({*RESERVED_VARS, "input"})

_GUARD_SCHEMA: dict[str, JsonValue] = {
    "type": "object",
    "properties": {GUARD_VERDICT: {"type": "boolean"}},
    "required": [GUARD_VERDICT],
}


class _Spec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class EdgeForm(StrEnum):
    """The four edge primitives of the seed syntax (the list that declared a link)."""

    CHILDREN = "children"
    FAN_IN = "fan_in"
    ORDERED_CHILDREN = "ordered_children"
    ORDERED_FAN_IN = "ordered_fan_in"


class Edge(_Spec):
    """One edge entry: ``node`` plus the nodes it launches and the nodes it waits for."""

    node: Annotated[str, StringConstraints(min_length=1, max_length=128)]
    children: list[Edge] = Field(default_factory=list)
    fan_in: list[Edge] = Field(default_factory=list)
    ordered_children: list[Edge] = Field(default_factory=list)
    ordered_fan_in: list[Edge] = Field(default_factory=list)

    def lists(self) -> Iterator[tuple[EdgeForm, list[Edge]]]:
        """``(form, entries)`` of this edge's four lists, in walking order."""
        yield EdgeForm.CHILDREN, self.children
        yield EdgeForm.FAN_IN, self.fan_in
        yield EdgeForm.ORDERED_CHILDREN, self.ordered_children
        yield EdgeForm.ORDERED_FAN_IN, self.ordered_fan_in


@dataclass(frozen=True, slots=True)
class Link:
    """One declared dependency: ``source`` finishes before ``target`` starts, and feeds it.

    Attributes:
        source: the node that runs first.
        target: the node that waits for it.
        form: the list that declared the link.
        path: dotted path of the entry that declared it (``edges.0.children.1.node``).
        sequence: whether it chains two entries of one ordered list (``A -> B`` of
            ``ordered_children: [A, B]``) rather than joining an entry to the edge's node.
    """

    source: str
    target: str
    form: EdgeForm
    path: str
    sequence: bool = False


def _walk(edge: Edge, path: str, links: list[Link]) -> None:
    node = edge.node
    for index, child in enumerate(edge.children):
        where = f"{path}.children.{index}"
        links.append(Link(node, child.node, EdgeForm.CHILDREN, f"{where}.node"))
        _walk(child, where, links)
    for index, entry in enumerate(edge.fan_in):
        where = f"{path}.fan_in.{index}"
        links.append(Link(entry.node, node, EdgeForm.FAN_IN, f"{where}.node"))
        _walk(entry, where, links)
    previous = node
    for index, child in enumerate(edge.ordered_children):
        where = f"{path}.ordered_children.{index}"
        links.append(Link(previous, child.node, EdgeForm.ORDERED_CHILDREN, f"{where}.node", index > 0))
        _walk(child, where, links)
        previous = child.node
    before: str | None = None
    for index, entry in enumerate(edge.ordered_fan_in):
        where = f"{path}.ordered_fan_in.{index}"
        if before is not None:
            links.append(Link(before, entry.node, EdgeForm.ORDERED_FAN_IN, f"{where}.node", True))
        links.append(Link(entry.node, node, EdgeForm.ORDERED_FAN_IN, f"{where}.node"))
        _walk(entry, where, links)
        before = entry.node


def declared_links(edges: Sequence[Edge]) -> list[Link]:
    """Every link the edges declare, in declared order (a pair may appear more than once)."""
    links: list[Link] = []
    for index, edge in enumerate(edges):
        _walk(edge, f"edges.{index}", links)
    return links


def _edge_entries(edges: Sequence[Edge]) -> Iterator[tuple[str, Edge]]:
    """``(path, edge)`` of every edge entry, nested ones included, in pre-order."""
    stack = [(f"edges.{index}", edge) for index, edge in reversed(list(enumerate(edges)))]
    while stack:
        path, edge = stack.pop()
        yield path, edge
        nested = [
            (f"{path}.{form}.{index}", entry)
            for form, entries in edge.lists()
            for index, entry in enumerate(entries)
        ]
        stack.extend(reversed(nested))


# --- nodes ----------------------------------------------------------------------------------------


def _guard_schema(schema: dict[str, JsonValue] | None) -> dict[str, JsonValue]:
    """``schema`` with a required boolean ``validation`` property (the default schema if None)."""
    if schema is None:
        return dict(_GUARD_SCHEMA)
    if schema.get("type", "object") != "object":
        raise ValueError("a guard's output_schema must describe an object (it carries 'validation')")
    properties = schema.get("properties", {})
    if not isinstance(properties, dict):
        raise ValueError("output_schema.properties must be a mapping")
    verdict = properties.get(GUARD_VERDICT)
    if verdict is not None and (not isinstance(verdict, dict) or verdict.get("type") != "boolean"):
        raise ValueError(f"a guard's output_schema property {GUARD_VERDICT!r} must be {{type: boolean}}")
    required = schema.get("required", [])
    if not isinstance(required, list):
        raise ValueError("output_schema.required must be a list")
    return {
        **schema,
        "type": "object",
        "properties": {**properties, GUARD_VERDICT: verdict if verdict is not None else {"type": "boolean"}},
        "required": required if GUARD_VERDICT in required else [*required, GUARD_VERDICT],
    }


class PipelineNode(_Spec):
    """One node of a pipeline: a task (``run``) or a whole fan-out (``fanout``), with the options of
    a ``Subtask``.

    ``guard: true`` makes the node a guard: it runs before every non-guard node and its output
    carries a boolean verdict. An ``llm`` guard gets an ``output_schema`` with a required boolean
    ``validation`` property (added to its own schema, or the whole schema when it has none); a
    ``python`` or ``agent`` guard must produce the verdict itself (see ``guard_verdict``).
    ``show: true`` marks a node whose output is shown to the user as a result.
    """

    id: BranchKey
    guard: bool = False
    show: bool = False
    run: TaskSpec | None = None
    fanout: FanOut | None = None
    vars: dict[TemplateName, JsonValue] = Field(
        default_factory=dict, description="this node's own template variables ({name} in prompts)"
    )
    limits: list[str] = Field(default_factory=list)
    timeout_s: float | None = Field(None, gt=0)
    retry: RetryPolicy = Field(default_factory=RetryPolicy)
    success: SuccessCriteria | None = None
    required: bool = False
    metadata: dict[str, JsonValue] = Field(default_factory=dict)

    @field_validator("run")
    @classmethod
    def _guard_output_schema(cls, run: TaskSpec | None, info: ValidationInfo) -> TaskSpec | None:
        if info.data.get("guard") and isinstance(run, LLMCall):
            return run.model_copy(update={"output_schema": _guard_schema(run.output_schema)})
        return run

    @field_validator("vars")
    @classmethod
    def _no_reserved_vars(cls, variables: dict[str, JsonValue]) -> dict[str, JsonValue]:
        return check_own_vars(variables, PIPELINE_VARS)

    @model_validator(mode="after")
    def _one_of_run_or_fanout(self) -> PipelineNode:
        if (self.run is None) == (self.fanout is None):
            raise ValueError("give exactly one of 'run' (a task) or 'fanout' (a whole fan-out)")
        if self.guard and self.fanout is not None:
            raise ValueError("a fan-out node cannot be a guard: give the guard a 'run'")
        return self


def guard_verdict(output: Any) -> bool:
    """A guard's verdict from its output: ``True`` lets the guarded nodes run, ``False`` blocks them.

    The output is the verdict itself (a bool), or an object with a boolean ``validation``, or an
    agent run's output whose parsed ``result`` is such an object.

    Raises:
        ValueError: the output carries no boolean verdict (the guard failed: an error, not a "no").
    """
    if isinstance(output, bool):
        return output
    if isinstance(output, dict):
        verdict = output.get(GUARD_VERDICT)
        if isinstance(verdict, bool):
            return verdict
        result = output.get("result")
        if verdict is None and isinstance(result, dict) and isinstance(result.get(GUARD_VERDICT), bool):
            return bool(result[GUARD_VERDICT])
    raise ValueError(f"a guard's output must be a boolean or carry a boolean {GUARD_VERDICT!r}")


# --- the pipeline ---------------------------------------------------------------------------------

ProviderName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$", max_length=64)]
PipelineFailure = Annotated[AllOrNothing | BestEffort, Field(discriminator="policy")]


class _StructureError(ValueError):
    """Every structural problem of a pipeline's graph, each naming its path; ``field`` is the first."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.field = problems[0][0]
        super().__init__("; ".join(f"{path}: {message}" for path, message in problems))


class Pipeline(_Spec):
    """A DAG of nodes: each starts when its own predecessors (and every guard) are done.

    ``input`` is the pipeline's input (``{input}`` in templates; the seed tutorial's user message),
    ``context`` the shared context every node sees as ``{context}``. Under ``best_effort`` (the
    default) a failed node's descendants are skipped and independent branches keep going; under
    ``all_or_nothing`` the first final failure cancels the rest.

    ``providers`` declares model providers its nodes use besides the built-in and configured ones
    (a seed graph's Ollama host): keyless, and never a built-in's name.
    """

    name: Annotated[str, StringConstraints(min_length=1, max_length=200)]
    input: str | None = None
    context: str | dict[str, JsonValue] | None = None
    nodes: list[PipelineNode] = Field(min_length=1)
    edges: list[Edge] = Field(default_factory=list)
    failure: PipelineFailure = Field(default_factory=BestEffort)
    budget: Budget | None = None
    deadline_s: float | None = Field(None, gt=0)
    idempotency_key: Annotated[str, StringConstraints(min_length=1, max_length=200)] | None = None
    providers: dict[ProviderName, ProviderConfig] = Field(default_factory=dict)

    @field_validator("providers")
    @classmethod
    def _keyless_providers(cls, providers: dict[str, ProviderConfig]) -> dict[str, ProviderConfig]:
        for name, config in providers.items():
            if name in ("openai", "anthropic", "ollama"):
                raise ValueError(f"{name!r} is a built-in provider: a pipeline cannot redefine it")
            if config.api_key_env is not None:
                raise ValueError(
                    f"provider {name!r}: a pipeline cannot name a key variable (api_key_env); declare "
                    "providers that need a key in FANFLOW_PROVIDERS"
                )
        return providers

    @field_validator("nodes")
    @classmethod
    def _unique_ids(cls, nodes: list[PipelineNode]) -> list[PipelineNode]:
        seen: dict[str, int] = {}
        for index, node in enumerate(nodes):
            if node.id in seen:
                raise ValueError(
                    f"duplicate node id {node.id!r} at nodes.{index}.id "
                    f"(first used at nodes.{seen[node.id]}.id); ids must be unique"
                )
            seen[node.id] = index
        return nodes

    @model_validator(mode="after")
    def _valid_graph(self) -> Pipeline:
        problems = _structure_problems(self)
        if problems:
            raise _StructureError(problems)
        return self

    def node(self, node_id: str) -> PipelineNode:
        """The node with this id (``KeyError`` if none); a dict lookup."""
        cached = self.__dict__.get("_node_index")
        if cached is None or cached[0] is not self.nodes:
            cached = (self.nodes, {node.id: node for node in self.nodes})
            self.__dict__["_node_index"] = cached
        return cached[1][node_id]

    @property
    def guards(self) -> list[str]:
        """Ids of the guard nodes, in declaration order."""
        return [node.id for node in self.nodes if node.guard]


def _unknown(node_id: str, known: Sequence[str]) -> str:
    close = difflib.get_close_matches(node_id, known, n=1)
    if close:
        return f"unknown node {node_id!r}; did you mean {close[0]!r}?"
    listed = ", ".join(known[:10]) + (", ..." if len(known) > 10 else "")
    return f"unknown node {node_id!r} (nodes: {listed})"


def _list_problems(path: str, edge: Edge) -> Iterator[tuple[str, str]]:
    """Contradictory nesting on one edge entry."""
    first: dict[tuple[str, str], str] = {}  # (role, node) -> path of its first entry in that role
    for form, entries in edge.lists():
        seen_here: dict[str, str] = {}
        role = "after" if form in (EdgeForm.CHILDREN, EdgeForm.ORDERED_CHILDREN) else "before"
        for index, entry in enumerate(entries):
            where = f"{path}.{form}.{index}.node"
            if entry.node in seen_here:
                yield where, f"{entry.node!r} is listed twice in {form} (first at {seen_here[entry.node]})"
                continue
            seen_here[entry.node] = where
            other = first.get((role, entry.node))
            if other is not None:
                message = f"is both parallel and sequential on the edge of {edge.node!r} (also at {other})"
                yield where, f"{entry.node!r} {message}; list it in one of them"
            opposite = first.get(("before" if role == "after" else "after", entry.node))
            if opposite is not None:
                message = f"is both before and after {edge.node!r} on one edge (also at {opposite})"
                yield where, f"{entry.node!r} {message}"
            first.setdefault((role, entry.node), where)


def _find_cycle(order: Iterable[str], successors: dict[str, list[str]]) -> list[str] | None:
    """A cycle ``[a, b, ..., a]`` of the relation, or None; deterministic (declaration order)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for start in order:
        if start in state:
            continue
        path = [start]
        state[start] = 1
        stack = [iter(successors.get(start, ()))]
        while stack:
            following = next(stack[-1], None)
            if following is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(following) == 1:
                return [*path[path.index(following) :], following]
            elif following not in state:
                state[following] = 1
                path.append(following)
                stack.append(iter(successors.get(following, ())))
    return None


def _structure_problems(pipeline: Pipeline) -> list[tuple[str, str]]:
    ids = [node.id for node in pipeline.nodes]
    known = set(ids)
    problems: list[tuple[str, str]] = []
    for path, edge in _edge_entries(pipeline.edges):
        if edge.node not in known:
            problems.append((f"{path}.node", _unknown(edge.node, ids)))
        problems.extend(_list_problems(path, edge))
    if problems:
        return problems
    links = declared_links(pipeline.edges)
    guards = set(pipeline.guards)
    successors: dict[str, list[str]] = {}
    first_path: dict[tuple[str, str], str] = {}
    for link in links:
        if link.target in guards and link.source not in guards:
            problems.append((link.path, (
                f"guard {link.target!r} cannot wait for non-guard node {link.source!r}: "
                "every guard runs before every non-guard node"
            )))  # fmt: skip
        if (link.source, link.target) not in first_path:
            first_path[(link.source, link.target)] = link.path
            successors.setdefault(link.source, []).append(link.target)
    if problems:
        return problems
    cycle = _find_cycle(ids, successors)
    if cycle is not None:
        closing = first_path[(cycle[-2], cycle[-1])]
        return [(closing, f"cycle {' -> '.join(cycle)}")]
    sources: dict[str, set[str]] = {}
    for link in links:
        sources.setdefault(link.target, set()).add(link.source)
    for index, node in enumerate(pipeline.nodes):
        for name in sorted(sources.get(node.id, set()) & set(node.vars)):
            problems.append((f"nodes.{index}.vars.{name}", (
                f"{name!r} is a predecessor of {node.id!r}: its output is the variable {{{name}}}; "
                "choose another variable name"
            )))  # fmt: skip
    return problems


def validate_pipeline(data: Pipeline | dict[str, Any], *, source: str | None = None) -> Pipeline:
    """Validate a pipeline given as a model or a plain dict.

    Raises:
        SpecError: naming every bad field by its dotted path (graph problems by the edge entry,
            e.g. ``edges.0.children.1.node: unknown node 'x'``); ``field`` is the first of them.
    """
    if isinstance(data, Pipeline):
        return data
    prefix = f"{source}: " if source else ""
    if not isinstance(data, dict):
        raise SpecError(f"{prefix}a pipeline must be a mapping, not {type(data).__name__}")
    try:
        return Pipeline.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        cause = errors[0].get("ctx", {}).get("error") if len(errors) == 1 and not errors[0]["loc"] else None
        if isinstance(cause, _StructureError):
            raise SpecError(prefix + str(cause), field=cause.field) from None
        message = format_validation_error(exc, source=source)
        field = message.removeprefix(prefix).split(":", 1)[0]
        raise SpecError(message, field=None if field == "(top level)" else field) from None
