"""The command line as a newcomer uses it: `fanflow run` on the embedded Redis, errors, --help."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.e2e.conftest import run_cli

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]


def fanflow(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return run_cli(*args, cwd=cwd)


def test_run_example_on_the_embedded_redis_prints_the_job_result() -> None:
    done = fanflow("run", "examples/wordcount.yaml", "--output", "json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["status"] == "partial"
    assert list(result["merged"]) == ["celery", "redis", "fanout"]
    assert result["flagged"] == ["missing"]
    missing = next(o for o in result["outcomes"] if o["key"] == "missing")
    assert missing["error"]["type"] == "FileNotFoundError"
    assert "embedded Redis" in done.stderr


def test_run_text_output_shows_the_table_and_how_to_retry() -> None:
    done = fanflow("run", "examples/summary.yaml")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["files"] == 3
    assert "flagged: absent" in done.stderr and "fanflow retry" in done.stderr


def test_the_model_example_runs_offline_and_shows_usage_by_model() -> None:
    done = fanflow("run", "examples/analysts.yaml", "--fake-llm")
    assert done.returncode == 0, done.stderr
    assert "## economic" not in done.stdout  # the synthesis, not the raw results, is the merged output
    assert "[claude-haiku-4-5] answer about: Topic: Impact of electric vehicles" in done.stdout
    assert "usage by model" in done.stderr
    for model in ("openai:gpt-4o-mini", "anthropic:claude-haiku-4-5", "total"):
        assert model in done.stderr
    as_json = json.loads(fanflow("run", "examples/analysts.yaml", "--fake-llm", "-o", "json").stdout)
    assert as_json["status"] == "succeeded" and as_json["usage"]["calls"] == 5
    assert as_json["usage_by_model"]["openai:gpt-4o-mini"]["calls"] == 4


def test_a_bad_spec_is_one_line_naming_the_field_and_exit_2(tmp_path: Path) -> None:
    spec = tmp_path / "bad.yaml"
    spec.write_text("name: x\nsubtasks:\n  - {key: a, run: {kind: python, function: 'no colon'}, retyr: 2}\n")
    done = fanflow("run", str(spec))
    assert done.returncode == 2
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "subtasks.0.run.function" in lines[0] and "subtasks.0.retyr" in lines[0]
    missing = fanflow("run", str(tmp_path / "absent.yaml"))
    assert missing.returncode == 2 and "cannot read spec file" in missing.stderr


def test_commands_that_need_a_broker_say_how_to_configure_one() -> None:
    done = fanflow("status", "some-job")
    assert done.returncode == 1
    assert "FANFLOW_BROKER_URL" in done.stderr


def test_help_reads_well() -> None:
    done = fanflow("--help")
    assert done.returncode == 0
    for command in ("run", "submit", "status", "result", "retry", "cancel", "watch", "worker"):
        assert command in done.stdout
    assert "Examples:" in done.stdout


def test_graph_prints_a_tutorial_graph_as_mermaid() -> None:
    done = fanflow("graph", "examples/tutorial/03_fan_out_fan_in.yml")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("flowchart LR\n")
    assert "dispatcher[dispatcher] --> economic_analyst[economic_analyst]" in done.stdout
    assert "social_analyst --> synthesizer" in done.stdout
    bad = fanflow("graph", "examples/wordcount.yaml")
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("graph", sorted(p.name for p in (ROOT / "examples" / "tutorial").glob("*.yml")))
def test_every_tutorial_graph_runs_offline_and_prints_its_shown_nodes(graph: str) -> None:
    from fanflow.pipeline import load_pipeline

    pipeline = load_pipeline(ROOT / "examples" / "tutorial" / graph).pipeline
    topic = "Impact of electric vehicles on urban areas."
    done = fanflow("run", f"examples/tutorial/{graph}", "--fake-llm", "--input", topic)
    assert done.returncode == 0, done.stderr
    assert "job succeeded" in done.stderr
    shown = [node.id for node in pipeline.nodes if node.show]
    printed = [line[1:-1] for line in done.stdout.splitlines() if line.startswith("[") and line.endswith("]")]
    assert printed == shown  # as the tutorial's runner prints them: "[node id]" then the answer
    assert topic in done.stdout or "answer about" in done.stdout
    as_json = json.loads(fanflow("run", f"examples/tutorial/{graph}", "--fake-llm", "--input", topic,
                                 "-o", "json").stdout)  # fmt: skip
    assert as_json["status"] == "succeeded"
    assert list(as_json["merged"]) == shown


def test_input_is_only_for_pipelines() -> None:
    done = fanflow("run", "examples/wordcount.yaml", "--input", "x")
    assert done.returncode == 2 and "--input is for pipelines" in done.stderr


def test_status_draws_a_pipeline_as_a_tree_of_its_nodes(e2e_redis_url: str, key_prefix: str) -> None:
    from fanflow import Client, Settings
    from fanflow.pipeline import load_pipeline

    pipeline = load_pipeline(ROOT / "examples" / "tutorial" / "03_fan_out_fan_in.yml").pipeline
    client = Client.from_settings(Settings(key_prefix=key_prefix).with_redis(e2e_redis_url))
    job_id = client.submit(pipeline).job_id  # no worker: the dispatcher waits in its queue
    env = {"FANFLOW_BROKER_URL": e2e_redis_url, "FANFLOW_KEY_PREFIX": key_prefix}
    done = run_cli("status", job_id, env=env)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith(f"{job_id} 03_fan_out_fan_in: pending")
    assert "pipeline 03_fan_out_fan_in" in done.stdout
    assert any("dispatcher" in line and "queued" in line for line in lines)
    for analyst in ("economic_analyst", "environmental_analyst", "social_analyst"):
        assert any(analyst in line and "pending" in line for line in lines), done.stdout
    assert any("synthesizer" in line and "also waits for" in line for line in lines), done.stdout


def test_the_pipeline_example_runs_on_the_embedded_redis() -> None:
    done = fanflow("run", "examples/report_pipeline.yaml")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("[report]\n")
    assert "largest: celery.txt (62 words)" in done.stdout
    as_json = json.loads(fanflow("run", "examples/report_pipeline.yaml", "-o", "json").stdout)
    assert as_json["status"] == "succeeded"
    assert [o["key"] for o in as_json["outcomes"]] == [
        "texts_present", "stats.celery", "stats.redis", "stats.fanout", "stats", "largest", "report",
    ]  # fmt: skip
