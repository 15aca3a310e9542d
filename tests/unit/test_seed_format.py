"""Graph files in the seed tutorial's format load as pipelines: every tutorial example, the Ollama
host as a provider, templates carrying ``{input}`` / ``{results}``, and every refusal named."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from fanflow.errors import SpecError
from fanflow.executors.llm import check_call_templates
from fanflow.pipeline import Graph, is_seed_graph, load_graph, ollama_provider, seed_graph
from fanflow.spec import LLMCall

TUTORIAL = Path(__file__).resolve().parents[2] / "examples" / "tutorial"
EXAMPLES = sorted(TUTORIAL.glob("*.yml"))


def call(loaded_pipeline: Any, node_id: str) -> LLMCall:
    run = loaded_pipeline.node(node_id).run
    assert isinstance(run, LLMCall)
    return run


def base(**overrides: Any) -> dict[str, Any]:
    """A small complete graph: a guard-free dispatcher and an analyst fed by it."""
    data: dict[str, Any] = {
        "models": [{"llm": "ollama", "model": "qwen2.5:7b", "host": "http://localhost:11434"}],
        "prompts": [
            {"template": {"system_template": {"role": "Split."}, "prompt_template": {"q": "{user_message}"}}},
            {
                "template": {
                    "system_template": {"role": "Analyse."},
                    "prompt_template": {"in": "{message_passing}"},
                }
            },
        ],
        "nodes": [
            {"id": "dispatcher", "model": 0, "prompt": {"template": 0, "user_message": True}},
            {"id": "analyst", "model": 0, "message_passing": {"input": True}, "prompt": {"template": 1}},
        ],
        "edges": [{"node": "dispatcher", "children": [{"node": "analyst"}]}],
    }
    data.update(overrides)
    return data


def refused(data: dict[str, Any]) -> SpecError:
    with pytest.raises(SpecError) as raised:
        seed_graph(data, name="g", source="g.yml")
    assert "\n" not in str(raised.value)
    assert str(raised.value).startswith("g.yml: ")
    return raised.value


# --- the tutorial's examples ----------------------------------------------------------------------


def test_the_tutorial_examples_are_there() -> None:
    assert [path.name for path in EXAMPLES] == [
        "01_fan_out.yml", "02_fan_in.yml", "03_fan_out_fan_in.yml", "04_nested_fan_out.yml",
        "05_fan_in_nested.yml", "06_guard_fan_out.yml", "07_ordered_children.yml",
        "07b_children_and_ordered_children.yml", "08_ordered_fan_in.yml", "08b_fan_in_and_ordered_fan_in.yml",
    ]  # fmt: skip


@pytest.mark.parametrize("path", EXAMPLES, ids=[path.stem for path in EXAMPLES])
def test_every_tutorial_example_loads_and_every_placeholder_will_be_filled(path: Path) -> None:
    loaded = load_graph(path)
    assert loaded.pipeline.name == path.stem
    assert loaded.providers == {}  # the default Ollama host is the built-in provider
    built = Graph(loaded.pipeline)
    for node in loaded.pipeline.nodes:
        run = call(loaded.pipeline, node.id)
        assert run.model == "ollama:qwen2.5:7b"
        check_call_templates(run, built.template_names(node.id), field=f"nodes.{node.id}.run")


def test_fan_out_example_runs_three_analysts_after_the_dispatcher() -> None:
    pipeline = load_graph(TUTORIAL / "01_fan_out.yml").pipeline
    built = Graph(pipeline)
    assert built.successors("dispatcher") == ("economic_analyst", "environmental_analyst", "social_analyst")
    assert [node.id for node in pipeline.nodes if node.show] == list(built.successors("dispatcher"))
    dispatcher = call(pipeline, "dispatcher")
    assert dispatcher.system == "<role>\nDecompose the research question into three sub-topics.</role>\n\n"
    assert dispatcher.prompt == "<question>\n{input}</question>\n\n"
    assert (dispatcher.temperature, dispatcher.max_tokens) == (0.2, 256)


def test_fan_in_example_feeds_the_analyses_to_the_synthesizer_in_declared_order() -> None:
    pipeline = load_graph(TUTORIAL / "02_fan_in.yml").pipeline
    built = Graph(pipeline)
    assert built.predecessors("synthesizer") == (
        "economic_analyst",
        "environmental_analyst",
        "social_analyst",
    )
    assert built.roots() == ("dispatcher", "economic_analyst", "environmental_analyst", "social_analyst")
    synthesizer = call(pipeline, "synthesizer")
    assert synthesizer.prompt == "<findings>\n{results}</findings>\n\n"
    assert synthesizer.system == (
        "<role>\nSynthesise the three analyses below into a single balanced report.\n</role>\n\n"
    )


def test_fan_out_fan_in_example_adds_no_edge_of_its_own() -> None:
    pipeline = load_graph(TUTORIAL / "03_fan_out_fan_in.yml").pipeline
    assert len(pipeline.edges) == 2  # message passing only repeats what fan_in says
    built = Graph(pipeline)
    assert built.levels() == (
        ("dispatcher",),
        ("economic_analyst", "environmental_analyst", "social_analyst"),
        ("synthesizer",),
    )
    assert call(pipeline, "economic_analyst").prompt == "<topic>\n{input}</topic>\n\n"
    assert call(pipeline, "synthesizer").prompt == "<analyses>\n{results}</analyses>\n\n"


# --- models and providers -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "host", [None, "http://localhost:11434", "http://localhost:11434/", "http://localhost:11434/v1"]
)
def test_the_default_ollama_host_is_the_builtin_provider(host: str | None) -> None:
    assert ollama_provider(host) == ("ollama", None)


def test_another_ollama_host_is_a_provider_of_its_own_named_by_its_hash() -> None:
    name, config = ollama_provider("http://gpu-box:11434")
    assert name.startswith("ollama-") and len(name) == len("ollama-") + 8
    assert ollama_provider("http://gpu-box:11434/") == (name, config)
    assert ollama_provider("http://other:11434")[0] != name
    assert config is not None
    assert (config.api, config.base_url, config.api_key_env, config.free) == (
        "openai",
        "http://gpu-box:11434/v1",
        None,  # a spec never sends a key to a host it names
        True,
    )


def test_a_graph_on_another_host_returns_the_provider_to_declare() -> None:
    models = [
        {"llm": "ollama", "model": "qwen2.5:7b", "host": "http://gpu-box:11434"},
        {"llm": "openai", "model": "gpt-4o-mini", "api_key": "${OPENAI_API_KEY}"},
        {"llm": "anthropic", "model": "claude-sonnet-4-6", "context_window": 200000},
    ]
    nodes = [
        {"id": "dispatcher", "model": 2, "prompt": {"template": 0, "user_message": True}},
        {"id": "analyst", "model": 1, "message_passing": {"input": True}, "prompt": {"template": 1}},
        {"id": "local", "model": 0, "prompt": {"template": 0, "user_message": True}},
    ]
    loaded = seed_graph(base(models=models, nodes=nodes), name="g")
    name, config = ollama_provider("http://gpu-box:11434")
    assert loaded.providers == {name: config}
    assert call(loaded.pipeline, "local").model == f"{name}:qwen2.5:7b"
    assert call(loaded.pipeline, "analyst").model == "openai:gpt-4o-mini"
    assert call(loaded.pipeline, "dispatcher").model == "anthropic:claude-sonnet-4-6"


@pytest.mark.parametrize("key", ["sk-secret", "${OTHER_KEY}", "${ANTHROPIC_API_KEY}"])
def test_a_key_in_the_file_is_refused(key: str) -> None:
    found = refused(base(models=[{"llm": "openai", "model": "gpt-4o", "api_key": key}]))
    assert found.field == "models.0.api_key"
    assert "OPENAI_API_KEY" in str(found) and "sk-secret" not in str(found)


@pytest.mark.parametrize("host", ["localhost:11434", "${OLLAMA_HOST}", "ftp://x"])
def test_an_ollama_host_must_be_a_url(host: str) -> None:
    found = refused(base(models=[{"llm": "ollama", "model": "qwen2.5:7b", "host": host}]))
    assert found.field == "models.0.host" and "must be an http:// or https:// URL" in str(found)


def test_only_an_ollama_model_has_a_host() -> None:
    assert (
        refused(base(models=[{"llm": "openai", "model": "gpt-4o", "host": "http://x"}])).field
        == "models.0.host"
    )


def test_a_model_index_out_of_range_is_named() -> None:
    data = base()
    data["nodes"][1]["model"] = 3
    found = refused(data)
    assert found.field == "nodes.1.model" and "model index 3 is out of range" in str(found)


# --- prompts --------------------------------------------------------------------------------------


def test_user_message_is_the_pipeline_input() -> None:
    assert seed_graph(base(user_message="EVs in cities"), name="g").pipeline.input == "EVs in cities"


def test_prompt_placeholders_become_the_nodes_vars() -> None:
    data = base()
    data["prompts"][0]["template"]["prompt_template"] = {"q": "{user_message} in {city}"}
    data["nodes"][0]["prompt"]["prompt_placeholders"] = {"city": "Turin"}
    pipeline = seed_graph(data, name="g").pipeline
    assert call(pipeline, "dispatcher").prompt == "<q>\n{input} in {city}</q>\n\n"
    assert pipeline.node("dispatcher").vars == {"city": "Turin"}
    assert "city" in Graph(pipeline).template_names("dispatcher")


def test_doubled_braces_are_braces_as_the_runner_formats_them() -> None:
    data = base()
    data["prompts"][0]["template"]["prompt_template"] = {
        "q": 'Answer as {{"topic": ...}} about {user_message}'
    }
    assert call(seed_graph(data, name="g").pipeline, "dispatcher").prompt == (
        '<q>\nAnswer as {"topic": ...} about {input}</q>\n\n'
    )


def test_tags_are_made_safe_as_the_runner_makes_them() -> None:
    data = base()
    data["prompts"][0]["template"]["system_template"] = {"my role!": "x", "1st": "y"}
    assert (
        call(seed_graph(data, name="g").pipeline, "dispatcher").system
        == "<my_role_>\nx</my_role_>\n\n<_1st>\ny</_1st>\n\n"
    )


def test_a_template_without_a_system_part_has_no_system() -> None:
    data = base()
    del data["prompts"][0]["template"]["system_template"]
    assert call(seed_graph(data, name="g").pipeline, "dispatcher").system is None


@pytest.mark.parametrize(
    ("prompt_template", "node_prompt", "message"),
    [
        ({"q": "{user_message}"}, {"template": 0}, "uses {user_message}, which the node does not provide"),
        (
            {"q": "{user_message} {x}"},
            {"template": 0, "prompt_placeholders": {"x": 1}},
            "does not provide placeholder {user_message}; the node must set prompt.user_message: true",
        ),
        ({"q": "{message_passing}"}, {"template": 0, "user_message": True}, "message_passing.input: true"),
        ({"q": "{user_message} {topic}"}, {"template": 0, "user_message": True}, "placeholder {topic}"),
        ({"q": "{user_message!r}"}, {"template": 0, "user_message": True}, "is not a plain name"),
        ({"q": "{user_message:>9}"}, {"template": 0, "user_message": True}, "is not a plain name"),
        (
            {"q": "{user_message} {{kept}}"},
            {"template": 0, "user_message": True},
            "{kept} would be a placeholder",
        ),
        ({"q": "{user_message} }"}, {"template": 0, "user_message": True}, "not a valid template"),
    ],
)
def test_placeholders_the_node_does_not_provide_are_refused(
    prompt_template: dict[str, str], node_prompt: dict[str, Any], message: str
) -> None:
    data = base()
    data["prompts"][0]["template"]["prompt_template"] = prompt_template
    data["nodes"][0]["prompt"] = node_prompt
    found = refused(data)
    assert found.field == "prompts.0.template.prompt_template"
    assert message in str(found)


def test_a_template_index_out_of_range_is_named() -> None:
    data = base()
    data["nodes"][0]["prompt"]["template"] = 7
    assert refused(data).field == "nodes.0.prompt.template"


def test_a_placeholder_named_like_a_pipeline_variable_is_refused() -> None:
    data = base()
    data["nodes"][0]["prompt"]["prompt_placeholders"] = {"results": "x"}
    assert refused(data).field == "nodes.0.vars"


# --- guards and structured output -----------------------------------------------------------------


def guarded(structured: dict[str, Any]) -> dict[str, Any]:
    data = base()
    data["prompts"].append({"template": {"prompt_template": {"message": "{user_message}"}}})
    guard = {"id": "input_guard", "model": 0, "prompt": {"template": 2, "user_message": True}}
    data["nodes"].insert(0, {**guard, "structured_output": structured})
    return data


def test_structured_output_with_validation_makes_a_guard_that_precedes_everything() -> None:
    structured = {
        "description": "Content appropriateness check",
        "parameters": {"validation": {"type": "boolean"}, "reason": {"type": "string"}},
        "required": ["validation", "reason"],
    }
    pipeline = seed_graph(guarded(structured), name="g").pipeline
    assert pipeline.guards == ["input_guard"]
    assert call(pipeline, "input_guard").output_schema == {
        "description": "Content appropriateness check",
        "type": "object",
        "properties": {"validation": {"type": "boolean"}, "reason": {"type": "string"}},
        "required": ["validation", "reason"],
    }
    built = Graph(pipeline)
    assert built.roots() == ("input_guard",)
    assert built.dependencies("dispatcher") == ("input_guard",)


def test_structured_output_without_validation_is_a_plain_schema() -> None:
    pipeline = seed_graph(guarded({"properties": {"summary": {"type": "string"}}}), name="g").pipeline
    assert pipeline.guards == []
    assert call(pipeline, "input_guard").output_schema == {
        "type": "object",
        "properties": {"summary": {"type": "string"}},
    }


@pytest.mark.parametrize(
    "structured",
    [
        {"parameters": {"validation": {"type": "boolean"}}, "properties": {}},
        {"properties": {"a": {"type": 12}}},
    ],
)
def test_an_unusable_structured_output_is_named(structured: dict[str, Any]) -> None:
    assert refused(guarded(structured)).field == "nodes.0.structured_output"


def test_a_guard_verdict_that_is_not_boolean_is_refused() -> None:
    found = refused(guarded({"parameters": {"validation": {"type": "string"}}}))
    assert found.field == "nodes.0.run" and "{type: boolean}" in str(found)


# --- message passing ------------------------------------------------------------------------------


def chain(edges: list[Any]) -> dict[str, Any]:
    data = base(edges=edges)
    data["prompts"].append({"template": {"prompt_template": {"points": "{message_passing}"}}})
    data["nodes"] = [
        {
            "id": "extractor",
            "model": 0,
            "message_passing": {"output": True},
            "prompt": {"template": 0, "user_message": True},
        },
        {
            "id": "formatter",
            "model": 0,
            "message_passing": {"input": True, "output": True},
            "prompt": {"template": 1},
        },
        {"id": "reporter", "model": 0, "message_passing": {"input": True}, "prompt": {"template": 2}},
    ]
    return data


def test_message_passing_alone_orders_a_chain_and_feeds_every_earlier_output() -> None:
    pipeline = seed_graph(
        chain([{"node": "extractor"}, {"node": "formatter"}, {"node": "reporter"}]), name="g"
    ).pipeline
    built = Graph(pipeline)
    assert built.predecessors("formatter") == ("extractor",)
    assert built.predecessors("reporter") == ("extractor", "formatter")
    assert built.topological_order() == ("extractor", "formatter", "reporter")
    assert [edge.node for edge in pipeline.edges[3:]] == ["formatter", "reporter"]


def test_message_passing_adds_only_what_the_edges_do_not_say() -> None:
    edges = [{"node": "extractor", "ordered_children": [{"node": "formatter"}, {"node": "reporter"}]}]
    pipeline = seed_graph(chain(edges), name="g").pipeline
    assert Graph(pipeline).predecessors("reporter") == ("formatter", "extractor")
    assert [edge.model_dump(exclude_defaults=True) for edge in pipeline.edges[1:]] == [
        {"node": "reporter", "fan_in": [{"node": "extractor"}]}
    ]


def test_a_cycle_through_an_added_edge_says_where_that_edge_comes_from() -> None:
    found = refused(chain([{"node": "extractor", "fan_in": [{"node": "formatter"}]}]))
    assert "cycle" in str(found)
    assert str(found) == (
        "g.yml: edges.0.fan_in.0.node: cycle extractor -> formatter -> extractor; fanflow adds "
        "edges.1 ('formatter' after 'extractor'), edges.2 ('reporter' after 'extractor', 'formatter') "
        "because a node with message_passing.input waits for every node with message_passing.output before it"
    )


# --- refusals -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda d: d.update(tools=[]), "tools"),
        (lambda d: d["nodes"][1].update(images=[0]), "nodes.1.images"),
        (lambda d: d["nodes"][0]["prompt"].update(retrieved_chunks=True), "nodes.0.prompt.retrieved_chunks"),
        (lambda d: d["edges"][0]["children"][0].update(react=[]), "edges.0.children.0.react"),
        (lambda d: d["prompts"][1].update(uri="x.yml"), "prompts.1.uri"),
        (lambda d: d["models"][0].update(aws_region_name="eu"), "models.0.aws_region_name"),
    ],
)
def test_features_fanflow_does_not_run_are_refused_by_name(change: Any, field: str) -> None:
    data = base()
    change(data)
    found = refused(data)
    assert found.field == field and "not supported by fanflow's graph files" in str(found)


def test_typos_and_unknown_providers_are_refused_by_name() -> None:
    data = base()
    data["nodes"][0]["temprature"] = 0.3
    assert "nodes.0.temprature: Extra inputs are not permitted" in str(refused(data))
    assert refused(base(models=[{"llm": "gemini", "model": "x"}])).field == "models.0.llm"


def test_graph_problems_are_named_by_their_path_in_the_file() -> None:
    found = refused(base(edges=[{"node": "dispatcher", "children": [{"node": "analist"}]}]))
    assert found.field == "edges.0.children.0.node" and "did you mean 'analyst'?" in str(found)


# --- files ----------------------------------------------------------------------------------------


def test_a_duplicate_key_in_the_file_names_both_lines(tmp_path: Path) -> None:
    text = (TUTORIAL / "01_fan_out.yml").read_text(encoding="utf-8") + "edges: []\n"
    path = tmp_path / "g.yml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(SpecError, match=r"g\.yml: duplicate key 'edges' at line \d+ \(first at line \d+\)"):
        load_graph(path)


def test_a_json_graph_file_loads_and_the_name_can_be_given(tmp_path: Path) -> None:
    path = tmp_path / "g.json"
    path.write_text(json.dumps(base()), encoding="utf-8")
    assert load_graph(path, name="research").pipeline.name == "research"


def test_a_missing_file_or_a_non_mapping_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="cannot read graph file"):
        load_graph(tmp_path / "nope.yml")
    (tmp_path / "list.yml").write_text("- 1\n", encoding="utf-8")
    with pytest.raises(SpecError, match=r"list\.yml: a graph file must be a mapping, not list"):
        load_graph(tmp_path / "list.yml")


def test_seed_graphs_are_told_from_other_specs() -> None:
    assert is_seed_graph(yaml.safe_load((TUTORIAL / "01_fan_out.yml").read_text(encoding="utf-8")))
    assert not is_seed_graph({"name": "p", "nodes": [], "edges": []})
    assert not is_seed_graph(["models", "prompts"])
