"""Graph files in the seed tutorial's own format (``models``, ``prompts``, ``nodes``, ``edges``) as pipelines.

Every node becomes an ``llm`` node of a ``Pipeline``; ``edges`` are taken as they are written. What
the file says and what it becomes:

- ``models[i]``: ``llm: ollama`` (with an optional ``host``, the Ollama server) becomes a model id
  ``ollama:<model>`` on the built-in ``ollama`` provider when the host is Ollama's default
  (``http://localhost:11434``, or none), else on a provider ``ollama-<hash of the host>`` declared
  in the pipeline's ``providers`` (OpenAI-compatible, at ``<host>/v1``, free, no key: a spec never
  sends a key to a host it names). ``llm: openai`` / ``anthropic`` use the built-in providers,
  whose keys the workers read from their environment: ``api_key`` may only name that variable
  (``${OPENAI_API_KEY}``), a key written in the file is refused. ``context_window`` is accepted and unused.
- ``prompts[i].template``: each entry of ``system_template`` / ``prompt_template`` becomes
  ``<name>\\nvalue</name>\\n\\n`` (the runner's own composition), giving the call's ``system`` and
  ``prompt``. Placeholders are filled as the runner fills them (``str.format``; ``{{`` is a brace),
  and become fanflow's: ``{user_message}`` -> ``{input}`` (the pipeline input), ``{message_passing}``
  -> ``{results}`` (the node's predecessors' outputs, in declared order), a ``prompt_placeholders``
  name -> the same name, kept in the node's ``vars``. A placeholder the node does not activate
  (``prompt.user_message``, ``message_passing.input``, ``prompt_placeholders``) is an error.
- ``nodes[i]``: ``model`` and ``prompt.template`` are indices; ``temperature``, ``max_tokens``,
  ``show`` carry over; ``structured_output`` (``parameters`` or ``properties``, ``required``)
  becomes the call's ``output_schema``, and a node whose schema has a ``validation`` field is a
  guard.
- ``message_passing``: as in the tutorial's runner, a node with ``input: true`` waits for every node
  with ``output: true`` that comes before it (edges walked in pre-order, then the nodes no edge
  names, in file order) -- fanflow adds those as a ``fan_in`` edge of its own at the end of
  ``edges`` (only for the nodes not already linked into it). A node's ``{results}`` are all of its
  predecessors' outputs, whether or not they set ``output: true``.
- ``user_message`` becomes the pipeline's ``input``; ``verbose`` is ignored.

The runner's other features (images, documents, tools, MCP servers, blackboards, chat history,
retrieved chunks, ReAct, batches, other model providers) are refused naming the field, never
silently dropped.
"""

from __future__ import annotations

import hashlib
import re
import string
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue, StringConstraints, ValidationError

from fanflow.errors import SpecError
from fanflow.executors.llm.output import validator_for
from fanflow.executors.llm.providers import ProviderConfig
from fanflow.pipeline.spec import GUARD_VERDICT, Edge, Pipeline, declared_links, validate_pipeline
from fanflow.spec_files import read_spec_file

__all__ = [
    "DEFAULT_OLLAMA_HOST",
    "LoadedGraph",
    "is_seed_graph",
    "load_graph",
    "ollama_provider",
    "seed_graph",
]

#: The Ollama server the built-in ``ollama`` provider points at by default.
DEFAULT_OLLAMA_HOST = "http://localhost:11434"

_UNSUPPORTED = {
    "": {
        "images", "documents", "tools", "mcp_servers", "react_compact_prompts", "chat_history",
        "batch_user_messages", "retrieved_chunks", "blackboard",
    },
    "models": {
        "aws_region_name", "aws_access_key", "aws_secret_key", "batch_role_arn", "batch_s3_input_uri",
        "batch_s3_output_uri",
    },
    "prompts": {"uri"},
    "nodes": {
        "batch_message_passing", "react_output", "react", "max_tool_calls", "images", "documents", "tools",
        "mcp_servers", "blackboard",
    },
    "nodes.prompt": {"retrieved_chunks", "chat_history", "batch_use_messages"},
    "edges": {"react", "batch_children", "batch_fan_in"},
}  # fmt: skip
_STANDARD_KEYS = {"openai": "OPENAI_API_KEY", "anthropic": "ANTHROPIC_API_KEY", "ollama": "OLLAMA_API_KEY"}
_ENV_REFERENCE = re.compile(r"^\$\{([A-Za-z_][A-Za-z0-9_]*)\}$")
_FANFLOW_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_ACTIVATION = {"user_message": "prompt.user_message: true", "message_passing": "message_passing.input: true"}


class _Seed(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class _SeedModel(_Seed):
    llm: Literal["ollama", "openai", "anthropic"]
    model: Annotated[str, StringConstraints(pattern=r"^\S+$")]
    host: str | None = None
    api_key: str | None = None
    context_window: int | None = Field(None, gt=0)


class _SeedTemplate(_Seed):
    system_template: dict[str, str] = Field(default_factory=dict)
    prompt_template: dict[str, str] = Field(default_factory=dict)


class _SeedPrompt(_Seed):
    template: _SeedTemplate


class _SeedNodePrompt(_Seed):
    template: int = Field(ge=0)
    user_message: bool = False
    prompt_placeholders: dict[str, JsonValue] = Field(default_factory=dict)


class _SeedMessagePassing(_Seed):
    input: bool = False
    output: bool = False


class _SeedNode(_Seed):
    id: str
    model: int = Field(ge=0)
    temperature: float = Field(0.0, ge=0.0, le=2.0)
    max_tokens: int = Field(1024, gt=0, le=1_000_000)
    show: bool = False
    message_passing: _SeedMessagePassing = Field(default_factory=_SeedMessagePassing)
    prompt: _SeedNodePrompt
    structured_output: dict[str, JsonValue] | None = None


class _SeedGraph(_Seed):
    models: list[_SeedModel] = Field(min_length=1)
    prompts: list[_SeedPrompt] = Field(default_factory=list)
    nodes: list[_SeedNode] = Field(min_length=1)
    edges: list[Edge] = Field(default_factory=list)
    user_message: str | None = None
    verbose: bool = False


@dataclass(frozen=True)
class LoadedGraph:
    """A graph file loaded as a pipeline.

    Attributes:
        pipeline: the pipeline (its ``input`` is the file's ``user_message``, if any).
        providers: the model providers the pipeline needs besides the built-in ones (name ->
            config): the pipeline's own ``providers``, which the processes that check or run it
            declare from the stored pipeline; empty when the built-ins suffice.
    """

    pipeline: Pipeline
    providers: dict[str, ProviderConfig] = field(default_factory=dict)


def ollama_provider(host: str | None) -> tuple[str, ProviderConfig | None]:
    """The provider name for an Ollama host, and its config (None: the built-in ``ollama``).

    The name is ``ollama`` for the default host and ``ollama-<8 hex digits of sha256(base URL)>``
    for any other, so the same host always gets the same name.

    Raises:
        ValueError: the host is not an ``http://`` or ``https://`` URL.
    """
    base = (host or DEFAULT_OLLAMA_HOST).strip().rstrip("/")
    if not re.match(r"^https?://[^\s/]+", base):
        raise ValueError(f"host {host!r} must be an http:// or https:// URL (e.g. {DEFAULT_OLLAMA_HOST!r})")
    base_url = base if base.endswith("/v1") else f"{base}/v1"
    if base_url == f"{DEFAULT_OLLAMA_HOST}/v1":
        return "ollama", None
    name = "ollama-" + hashlib.sha256(base_url.encode()).hexdigest()[:8]
    return name, ProviderConfig(api="openai", base_url=base_url, free=True)


def is_seed_graph(data: object) -> bool:
    """Whether parsed file contents look like a graph file of the seed format (``models`` and ``prompts``)."""
    return isinstance(data, Mapping) and "models" in data and "prompts" in data


def load_graph(path: str | Path, *, name: str | None = None) -> LoadedGraph:
    """Load a graph file (YAML, or JSON) of the seed format as a pipeline.

    Args:
        path: the file.
        name: the pipeline's name (default: the file's stem).

    Raises:
        SpecError: the file is unreadable, not valid YAML, has a duplicate key, uses a feature
            fanflow does not run, or does not describe a valid pipeline -- one line naming the file
            and the field.
    """
    data, source = read_spec_file(path, what="graph")
    return seed_graph(data, name=name or Path(path).stem, source=source)


def seed_graph(data: object, *, name: str, source: str | None = None) -> LoadedGraph:
    """A graph of the seed format, already parsed, as a pipeline (see ``load_graph``).

    Raises:
        SpecError: naming the field (and ``source``, when given).
    """
    prefix = f"{source}: " if source else ""
    if not isinstance(data, dict):
        raise SpecError(f"{prefix}a graph file must be a mapping, not {type(data).__name__}")
    _refuse_unsupported(data, prefix)
    try:
        graph = _SeedGraph.model_validate(data)
    except ValidationError as exc:
        # The file's own models have no tagged unions, so every part of a location is a real field.
        problems = [
            (".".join(str(part) for part in item["loc"]), item["msg"].removeprefix("Value error, "))
            for item in exc.errors(include_url=False)
        ]
        message = "; ".join(f"{where or '(top level)'}: {what}" for where, what in problems)
        raise SpecError(prefix + message, field=problems[0][0] or None) from None
    try:
        model_ids, providers = _models(graph)
        nodes = [_node(graph, index, node, model_ids) for index, node in enumerate(graph.nodes)]
    except SpecError as exc:
        raise SpecError(prefix + str(exc), field=exc.field) from None
    inferred = _message_passing_edges(graph)
    spec = {
        "name": name, "input": graph.user_message, "nodes": nodes, "edges": [*graph.edges, *inferred],
        "providers": providers,
    }  # fmt: skip
    try:
        pipeline = validate_pipeline(spec, source=source)
    except SpecError as exc:
        raise SpecError(_explain_inferred(str(exc), spec, graph, inferred), field=exc.field) from None
    return LoadedGraph(pipeline, providers)


def _refuse_unsupported(data: dict[str, Any], prefix: str) -> None:
    """Raise ``SpecError`` for the first feature of the runner that fanflow does not run."""
    found = _unsupported_keys(data, "", "")
    for kind in ("models", "prompts", "nodes"):
        items = data.get(kind)
        for index, item in enumerate(items if isinstance(items, list) else []):
            found.extend(_unsupported_keys(item, kind, f"{kind}.{index}"))
            if kind == "nodes" and isinstance(item, dict):
                found.extend(_unsupported_keys(item.get("prompt"), "nodes.prompt", f"nodes.{index}.prompt"))
    edges = data.get("edges")
    stack = [(f"edges.{i}", e) for i, e in enumerate(edges)][::-1] if isinstance(edges, list) else []
    while stack:  # pre-order, so the first refusal is the first in the file
        path, edge = stack.pop()
        found.extend(_unsupported_keys(edge, "edges", path))
        nested = [
            (f"{path}.{form}.{i}", entry)
            for form in ("children", "fan_in", "ordered_children", "ordered_fan_in")
            if isinstance(edge, dict) and isinstance(edge.get(form), list)
            for i, entry in enumerate(edge[form])
        ]
        stack.extend(reversed(nested))
    if found:
        raise SpecError(f"{prefix}{found[0]}: not supported by fanflow's graph files", field=found[0])


def _unsupported_keys(item: object, kind: str, path: str) -> list[str]:
    if not isinstance(item, dict):
        return []
    return [f"{path}.{key}" if path else str(key) for key in item if key in _UNSUPPORTED[kind]]


def _models(graph: _SeedGraph) -> tuple[list[str], dict[str, ProviderConfig]]:
    model_ids: list[str] = []
    providers: dict[str, ProviderConfig] = {}
    for index, model in enumerate(graph.models):
        where = f"models.{index}"
        if model.host is not None and model.llm != "ollama":
            raise SpecError(f"{where}.host: only an ollama model has a host", field=f"{where}.host")
        if model.api_key is not None:
            reference = _ENV_REFERENCE.match(model.api_key.strip())
            standard = _STANDARD_KEYS[model.llm]
            if reference is None or reference.group(1) != standard:
                raise SpecError(
                    f"{where}.api_key: fanflow never takes a key from a graph file: the workers read "
                    f"{standard} from their environment (write api_key: ${{{standard}}}, or leave it out)",
                    field=f"{where}.api_key",
                )
        provider_name: str = model.llm
        if model.llm == "ollama":
            try:
                provider_name, config = ollama_provider(model.host)
            except ValueError as exc:
                raise SpecError(f"{where}.host: {exc}", field=f"{where}.host") from None
            if config is not None:
                providers[provider_name] = config
        model_ids.append(f"{provider_name}:{model.model}")
    return model_ids, providers


def _compose(entries: Mapping[str, str]) -> str:
    """The runner's composition of a template part: ``<name>\\nvalue</name>\\n\\n`` per entry."""
    parts = []
    for name, value in entries.items():
        tag = _safe_tag(name)
        parts.append(f"<{tag}>\n{value}</{tag}>\n\n")
    return "".join(parts)


def _safe_tag(name: str) -> str:
    """A template entry's name as an XML-safe tag, as the runner makes it."""
    tag = re.sub(r"[^A-Za-z0-9_\-]", "_", name)
    return tag if tag and (tag[0].isalpha() or tag[0] == "_") else "_" + tag


def _translate(text: str, names: Mapping[str, str], formatted: bool, where: str) -> str:
    """The template ``text`` with the runner's placeholders turned into fanflow's (see the module doc).

    ``formatted``: whether the runner formats the text at all (it does not when the node activates
    no placeholder, and then sends it as written).
    """
    pieces: list[str] = []
    intended: set[int] = set()  # where a placeholder of the translation starts
    length = 0
    parsed: list[tuple[str, str | None, str | None, str | None]]
    try:
        parsed = list(string.Formatter().parse(text)) if formatted else [(text, None, None, None)]
    except ValueError as exc:
        raise SpecError(f"{where}: not a valid template ({exc})", field=where) from None
    for literal, name, spec, conversion in parsed:
        pieces.append(literal)
        length += len(literal)
        if name is None:
            continue
        if spec or conversion or not name.isidentifier():
            raise SpecError(f"{where}: placeholder {{{name}}} is not a plain name", field=where)
        if name not in names:
            hint = f"; the node must set {_ACTIVATION[name]}" if name in _ACTIVATION else ""
            raise SpecError(f"{where}: the node does not provide placeholder {{{name}}}{hint}", field=where)
        intended.add(length)
        pieces.append(names[name])
        length += len(names[name])
    result = "".join(pieces)
    for match in _FANFLOW_PLACEHOLDER.finditer(result):
        if match.start() in intended:
            continue
        found = match.group(1)
        if not formatted and found in _ACTIVATION:
            hint = f"the node must set {_ACTIVATION[found]}"
            raise SpecError(
                f"{where}: uses {{{found}}}, which the node does not provide; {hint}", field=where
            )
        raise SpecError(
            f"{where}: the text {match.group(0)} would be a placeholder in fanflow's templates, "
            "which cannot keep it as written",
            field=where,
        )
    return result


def _output_schema(structured: dict[str, JsonValue], where: str) -> dict[str, JsonValue]:
    schema = dict(structured)
    if "parameters" in schema:
        if "properties" in schema:
            raise SpecError(f"{where}: give 'parameters' or 'properties', not both", field=where)
        schema["properties"] = schema.pop("parameters")
    schema.setdefault("type", "object")
    try:
        validator_for(schema)
    except SpecError as exc:
        raise SpecError(f"{where}: {exc}", field=where) from None
    return schema


def _node(graph: _SeedGraph, index: int, node: _SeedNode, model_ids: list[str]) -> dict[str, Any]:
    where = f"nodes.{index}"
    if node.model >= len(model_ids):
        raise SpecError(
            f"{where}.model: model index {node.model} is out of range (the file declares "
            f"{len(model_ids)} model(s): 0-{len(model_ids) - 1})",
            field=f"{where}.model",
        )
    prompt = node.prompt
    if prompt.template >= len(graph.prompts):
        raise SpecError(
            f"{where}.prompt.template: template index {prompt.template} is out of range (the file "
            f"declares {len(graph.prompts)} prompt(s))",
            field=f"{where}.prompt.template",
        )
    names = {name: "{" + name + "}" for name in prompt.prompt_placeholders}
    if prompt.user_message:
        names["user_message"] = "{input}"
    if node.message_passing.input:
        names["message_passing"] = "{results}"
    template = graph.prompts[prompt.template].template
    origin = f"prompts.{prompt.template}.template"
    system = _translate(_compose(template.system_template), names, bool(names), f"{origin}.system_template")
    text = _translate(_compose(template.prompt_template), names, bool(names), f"{origin}.prompt_template")
    schema = None
    if node.structured_output is not None:
        schema = _output_schema(node.structured_output, f"{where}.structured_output")
    properties = schema.get("properties") if schema is not None else None
    run: dict[str, Any] = {
        "kind": "llm",
        "model": model_ids[node.model],
        "system": system or None,
        "prompt": text,
        "max_tokens": node.max_tokens,
        "temperature": node.temperature,
        "output_schema": schema,
    }
    return {
        "id": node.id,
        "guard": isinstance(properties, dict) and GUARD_VERDICT in properties,
        "show": node.show,
        "run": run,
        "vars": dict(prompt.prompt_placeholders),
    }


def _message_passing_edges(graph: _SeedGraph) -> list[Edge]:
    """One ``fan_in`` edge per ``message_passing.input`` node: the ``output`` nodes before it."""
    order: list[str] = []
    stack = list(reversed(graph.edges))
    while stack:
        edge = stack.pop()
        if edge.node not in order:
            order.append(edge.node)
        nested = [entry for _, entries in edge.lists() for entry in entries]
        stack.extend(reversed(nested))
    order.extend(node.id for node in graph.nodes if node.id not in order)
    flags = {node.id: node.message_passing for node in graph.nodes}
    linked: dict[str, set[str]] = {}
    for link in declared_links(graph.edges):
        linked.setdefault(link.target, set()).add(link.source)
    edges: list[Edge] = []
    for position, node_id in enumerate(order):
        if node_id not in flags or not flags[node_id].input:
            continue
        sources = [
            earlier
            for earlier in order[:position]
            if earlier in flags and flags[earlier].output and earlier not in linked.get(node_id, set())
        ]
        if sources:
            edges.append(Edge(node=node_id, fan_in=[Edge(node=source) for source in sources]))
    return edges


def _explain_inferred(message: str, spec: dict[str, Any], graph: _SeedGraph, inferred: list[Edge]) -> str:
    """``message`` with a word on the edges fanflow added, when they are what makes it fail."""
    if not inferred:
        return message
    try:
        validate_pipeline({**spec, "edges": graph.edges})
    except SpecError:
        return message  # the file is wrong on its own
    added = [
        f"edges.{len(graph.edges) + offset} ({edge.node!r} after "
        + ", ".join(repr(entry.node) for entry in edge.fan_in)
        + ")"
        for offset, edge in enumerate(inferred)
    ]
    return (
        f"{message}; fanflow adds {', '.join(added)} because a node with message_passing.input waits for "
        "every node with message_passing.output before it"
    )
