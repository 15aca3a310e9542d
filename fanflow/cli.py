"""The ``fanflow`` command line: run, submit, watch and retry fan-outs; map a command over inputs."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, NoReturn

import click
import redis
from kombu.exceptions import KombuError
from rich.console import Console
from rich.table import Table

from fanflow import cli_limits
from fanflow.app import ALL_QUEUES, default_concurrency, limiter_of
from fanflow.client import Client, JobHandle
from fanflow.config import Settings
from fanflow.errors import ConfigError, FanflowError, SpecError
from fanflow.gitmerge import kept_branches
from fanflow.outage import describe_exception, is_outage
from fanflow.pipeline.spec import Pipeline
from fanflow.pipeline.view import node_tree, shown_outputs
from fanflow.ratelimit import Limiter
from fanflow.result import JobResult, JobStatus, OutcomeStatus
from fanflow.watching import follow

__all__ = ["main"]

console = Console(stderr=True)
stdout = Console(highlight=False, soft_wrap=True)

_STATUS_STYLE = {
    OutcomeStatus.SUCCEEDED: "green", OutcomeStatus.FAILED: "red", OutcomeStatus.CANCELLED: "yellow",
    OutcomeStatus.SKIPPED: "dim", OutcomeStatus.BLOCKED: "magenta",
}  # fmt: skip


def _settings() -> Settings:
    try:
        return Settings()
    except Exception as exc:  # pydantic's ValidationError or ConfigError: one line either way
        raise click.ClickException(f"bad FANFLOW_* settings: {exc}".splitlines()[0]) from exc


def _client(settings: Settings) -> Client:
    if not settings.configured:
        raise click.ClickException(
            "no broker configured: set FANFLOW_BROKER_URL (e.g. redis://:password@localhost:6379/0). "
            "`fanflow run` works without one (it starts an embedded Redis)."
        )
    return Client.from_settings(settings)


def _add_import_paths(spec: Path) -> None:
    # Python callables named in a spec usually live next to it or in the current directory.
    for path in (str(spec.resolve().parent), str(Path.cwd())):
        if path not in sys.path:
            sys.path.insert(0, path)


@contextlib.contextmanager
def _environment(values: Mapping[str, str]) -> Iterator[None]:
    """Set ``values`` in this process's environment (the in-process worker's branches read it)."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextlib.contextmanager
def _fake_model_server(latency_s: float) -> Iterator[None]:
    """A fake model server for this process's model calls (OpenAI and Anthropic wire formats)."""
    from fanflow.dev.fake_llm import FakeLLM

    with FakeLLM(latency_s=latency_s) as server:
        console.print(f"[dim]model calls go to a fake model server on {server.url}[/]")
        with _environment({
            "OPENAI_BASE_URL": f"{server.url}/v1", "OPENAI_API_KEY": "fake-key",
            "ANTHROPIC_BASE_URL": server.url, "ANTHROPIC_API_KEY": "fake-key",
            "OLLAMA_BASE_URL": f"{server.url}/v1", "OLLAMA_API_KEY": "fake-key",
        }):  # fmt: skip
            yield


def _fake_agents() -> contextlib.AbstractContextManager[None]:
    """``claude`` and ``codex`` are fanflow's stand-ins for this run: their directory comes first on PATH."""
    from fanflow.dev.agents import AGENTS_DIR

    console.print("[dim]claude and codex are fanflow's stand-in agents for this run[/]")
    return _environment({"PATH": os.pathsep.join(filter(None, [str(AGENTS_DIR), os.environ.get("PATH")]))})


fake_agents_option = click.option(
    "--fake-agents", is_flag=True,
    help="Run fanflow's stand-ins for `claude` and `codex` (offline demos): they act on the prompt and print "
    "what the real CLIs print. Affects the in-process worker only.",
)  # fmt: skip


@contextlib.contextmanager
def _local_client(settings: Settings, concurrency: int, local_worker: bool) -> Iterator[Client]:
    """A client on the configured broker, or on an embedded Redis with an in-process worker."""
    from fanflow.embedded import EmbeddedRedis, InProcessWorker

    with contextlib.ExitStack() as stack:
        if not settings.configured:
            console.print(
                "[dim]no FANFLOW_BROKER_URL: starting an embedded Redis and an in-process worker[/]"
            )
            server = stack.enter_context(EmbeddedRedis())
            settings = settings.with_redis(server.url)
            local_worker = True
        client = Client.from_settings(settings)
        if local_worker:
            stack.enter_context(InProcessWorker(client.app, concurrency=concurrency))
        yield client


def _follow(
    handle: JobHandle, timeout: float | None, show_progress: bool, pipeline: Pipeline | None = None
) -> JobResult:
    """Wait for the job; with ``show_progress``, draw its live view (progress, spend, branches or a
    pipeline's tree of nodes) on stderr."""
    if not show_progress:
        return handle.wait(timeout)
    return follow(handle, console, timeout=timeout, pipeline=pipeline)


def _print_usage(result: JobResult) -> None:
    if not result.usage_by_model:
        return
    usage_table = Table(title="usage by model", title_justify="left")
    widest = max(len(model) for model in result.usage_by_model)
    usage_table.add_column("model", no_wrap=True, min_width=max(widest, 5))
    for column in ("calls", "input tokens", "cached", "output tokens", "cost USD"):
        usage_table.add_column(column, justify="right")
    for model, used in [*result.usage_by_model.items(), ("total", result.usage)]:
        usage_table.add_row(model, f"{used.calls:,}", f"{used.input_tokens:,}", f"{used.cached_tokens:,}",
                            f"{used.output_tokens:,}", f"{used.cost_usd:.6f}")  # fmt: skip
    console.print(usage_table)


def _print_result(result: JobResult, output: str, pipeline: Pipeline | None = None) -> None:
    if output == "json":
        stdout.print(result.model_dump_json(indent=2), markup=False)
        return
    table = Table(title=f"{result.name} — job {result.job_id}", title_justify="left")
    first = "node" if pipeline is not None else "branch"
    for column in (first, "status", "attempts", "seconds", "tokens", "error"):
        table.add_column(column)
    for outcome in result.outcomes:
        style = _STATUS_STYLE[outcome.status]
        seconds = f"{outcome.duration_s:.2f}" if outcome.duration_s is not None else ""
        error = f"{outcome.error.type}: {outcome.error.message}" if outcome.error else ""
        tokens = f"{outcome.usage.total_tokens:,}" if outcome.usage.total_tokens else ""
        table.add_row(
            outcome.key, f"[{style}]{outcome.status.value}[/]", str(outcome.attempts), seconds, tokens, error
        )
    console.print(table)
    _print_usage(result)
    if pipeline is not None:  # its shown nodes, as the seed tutorial's runner prints them
        stdout.print(shown_outputs(pipeline, result).lstrip("\n"), markup=False)
    elif result.merged is not None:
        merged = result.merged if isinstance(result.merged, str) else json.dumps(result.merged, indent=2)
        stdout.print(merged, markup=False)
    summary = f"job {result.status.value}"
    if result.flagged:
        summary += (
            f"; flagged: {', '.join(result.flagged)} (re-run them with `fanflow retry {result.job_id}`)"
        )
    if result.blocked_by:
        summary += f"; guard {result.blocked_by!r} said no"
    if result.budget_exhausted:
        summary += "; the budget ran out: branches not yet started were stopped"
    if result.error:
        summary += f"\n{result.error.type}: {result.error.message}"
    style = "green" if result.status is JobStatus.SUCCEEDED else "yellow"
    console.print(summary, style=style, markup=False, soft_wrap=True)


def _print_branches(result: JobResult) -> None:
    branches = kept_branches(result.outcomes, result.merged)
    if branches:
        console.print(f"{len(branches)} git branch(es) kept; delete them in their repository with\n"
                      f"  git branch -D {' '.join(branches)}", markup=False, highlight=False,
                      soft_wrap=True)  # fmt: skip


def _exit_code(result: JobResult) -> int:
    return 1 if result.status in (JobStatus.FAILED, JobStatus.CANCELLED) else 0


output_option = click.option(
    "--output", "-o", type=click.Choice(["text", "json"]), default="text", show_default=True,
    help="text: a table on stderr and the merged output on stdout; json: the JobResult as JSON.",
)  # fmt: skip


def _error(message: str, code: int) -> NoReturn:
    """Print one line on stderr and exit with ``code``."""
    line = " ".join(message.split())
    console.print(f"error: {line}", style="red", markup=False, highlight=False, soft_wrap=True)
    sys.exit(code)


class _Group(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (SpecError, ConfigError) as exc:
            _error(str(exc), 2)
        except FanflowError as exc:
            _error(str(exc), 1)
        except (redis.RedisError, KombuError, ConnectionError) as exc:
            # The client turns outages into BackendError; anything that still slips through is one
            # line too, never a traceback.
            what = "Redis or the broker is unreachable" if is_outage(exc) else "Redis or the broker failed"
            _error(f"{what}: {describe_exception(exc)}", 1)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="fanflow")
def main() -> None:
    """Fan out model calls, agent runs and Python callables on Celery workers, then merge them back.

    Broker and job store come from FANFLOW_BROKER_URL (and FANFLOW_RESULT_BACKEND); without one,
    `fanflow run` starts an embedded Redis and an in-process worker.

    \b
    Examples:
      fanflow run examples/wordcount.yaml          # run a spec locally and print the result
      fanflow map -c 4 --command 'claude -p "Write tests for {}"' src/*.py   # xargs -P as one job
      fanflow submit job.yaml                      # enqueue on the configured broker, print the job id
      fanflow watch JOB && fanflow result JOB -o json
      fanflow retry JOB --wait                     # re-run only the failed branches, merge again
      fanflow worker -Q fanflow.llm                # model calls: 500 threads by default
    """


@main.command()
@click.argument("spec", type=click.Path(path_type=Path))
@click.option("--input", "input_text", metavar="TEXT",
              help="A pipeline's input ({input}; a seed graph's user message).")  # fmt: skip
@output_option
@click.option("--timeout", type=float, default=None, help="Give up waiting after this many seconds.")
@click.option("--concurrency", "-c", type=int, default=8, show_default=True,
              help="Threads of the in-process worker.")  # fmt: skip
@click.option("--local-worker", is_flag=True, help="Also start an in-process worker on a configured broker.")
@click.option(
    "--progress/--no-progress", default=True, show_default=True, help="Draw a progress bar on stderr."
)
@click.option(
    "--fake-llm", is_flag=True,
    help="Answer model calls from a fake model server started here (offline demos; sets OPENAI_BASE_URL, "
    "ANTHROPIC_BASE_URL and stand-in keys for this run).",
)  # fmt: skip
@fake_agents_option
def run(
    spec: Path, input_text: str | None, output: str, timeout: float | None, concurrency: int,
    local_worker: bool, progress: bool, fake_llm: bool, fake_agents: bool,
) -> None:  # fmt: skip
    """Run the fan-out or pipeline in SPEC (YAML or JSON) and print its result.

    A pipeline file is fanflow's (nodes and edges) or the seed tutorial's graph format (models,
    prompts, nodes, edges); its `show: true` nodes are printed as the tutorial prints them.

    \b
    Examples:
      fanflow run examples/wordcount.yaml
      fanflow run examples/tutorial/03_fan_out_fan_in.yml --fake-llm \\
          --input "Impact of electric vehicles on urban areas."
    """
    from fanflow.pipeline.loading import load_job_file

    job = load_job_file(spec)  # fail on a bad spec before starting anything
    if input_text is not None:
        if not isinstance(job, Pipeline):
            raise click.UsageError("--input is for pipelines; a fan-out's subtasks carry their own inputs")
        job = job.model_copy(update={"input": input_text})
    pipeline = job if isinstance(job, Pipeline) else None
    _add_import_paths(spec)
    settings = _settings()
    with contextlib.ExitStack() as stack:
        if fake_llm:
            stack.enter_context(_fake_model_server(latency_s=0.3))
        if fake_agents:
            stack.enter_context(_fake_agents())
        client = stack.enter_context(_local_client(settings, concurrency, local_worker))
        handle = client.submit(job)
        what = f"{len(job.nodes)} nodes" if isinstance(job, Pipeline) else f"{len(job.subtasks)} branches"
        console.print(f"[dim]job {handle.job_id}: {what}[/]")
        if settings.configured and not local_worker:
            console.print("[dim]waiting for workers on the configured broker (or pass --local-worker)[/]")
        result = _follow(handle, timeout, progress and output == "text" and console.is_terminal, pipeline)
    _print_result(result, output, pipeline)
    if output == "text":
        _print_branches(result)
    sys.exit(_exit_code(result))


@main.command("map")
@click.argument("inputs", nargs=-1)
@click.option("--command", "command", required=True, metavar="COMMAND",
              help="The command; {} marks the input (else it goes last). No shell runs it.")  # fmt: skip
@click.option("--from", "source", metavar="FILE", help="Read the inputs from FILE, one per line (- : stdin).")
@click.option("--concurrency", "-c", type=click.IntRange(min=1), default=4, show_default=True,
              help="Inputs at once (and the in-process worker's threads).")  # fmt: skip
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), help="Seconds each input may take.")
@click.option("--retries", type=click.IntRange(0, 49), default=0, show_default=True,
              help="Try a failed input again up to this many times.")  # fmt: skip
@click.option("--worktree", is_flag=True,
              help="Each input in a git worktree of this repository, on a branch of its own.")  # fmt: skip
@click.option("--env", "env", multiple=True, metavar="NAME",
              help="Pass this environment variable on (PATH, HOME, LANG and such always are).")  # fmt: skip
@click.option("--name", help="The job's name.")
@click.option("--output", "-o", type=click.Choice(["text", "json"]), default="text", show_default=True,
              help="text: a table on stderr; json: the JobResult as JSON on stdout.")  # fmt: skip
@click.option("--progress/--no-progress", default=True, show_default=True,
              help="Draw a progress bar on stderr.")  # fmt: skip
@click.option("--local-worker", is_flag=True, help="Also start an in-process worker on a configured broker.")
@fake_agents_option
def map_command(
    inputs: tuple[str, ...], command: str, source: str | None, concurrency: int, timeout: float | None,
    retries: int, worktree: bool, env: tuple[str, ...], name: str | None, output: str, progress: bool,
    local_worker: bool, fake_agents: bool,
) -> None:  # fmt: skip
    """Run COMMAND once per input, N at a time, and print a table (exit 0 only when every input succeeded).

    Each run happens in the current directory, or with --worktree at the top of a worktree of its own
    made from HEAD (so inputs are paths from the repository's top; uncommitted changes are not there).

    \b
    Examples:
      fanflow map --command 'claude -p "Write tests for {}"' src/api/*.ts
      git ls-files '*.py' | fanflow map --from - --worktree -c 8 --command 'codex exec "Add type hints to {}"'
    """
    from fanflow import mapping

    items = mapping.read_inputs(inputs, source, sys.stdin)
    repo = mapping.git_toplevel(Path.cwd()) if worktree else None
    fanout = mapping.build_map(command, items, name=name, concurrency=concurrency, timeout_s=timeout,
                               retries=retries, repo=repo, workdir=str(Path.cwd()), env=env)  # fmt: skip
    with contextlib.ExitStack() as stack:
        if fake_agents:
            stack.enter_context(_fake_agents())
        client = stack.enter_context(_local_client(_settings(), concurrency, local_worker))
        handle = client.submit(fanout)
        console.print(f"[dim]job {handle.job_id}: {len(items)} inputs, {concurrency} at a time[/]")
        result = _follow(handle, None, progress and output == "text" and console.is_terminal)
    if output == "json":
        stdout.print(result.model_dump_json(indent=2), markup=False)
    else:
        console.print(mapping.result_table(result, fanout))
        failed = sum(not outcome.succeeded for outcome in result.outcomes)
        summary = f"{len(items) - failed} of {len(items)} inputs succeeded"
        console.print(summary, style="red" if failed else "green", markup=False)
        _print_branches(result)
    sys.exit(0 if mapping.all_succeeded(result) else 1)


@main.command()
@click.argument("spec", type=click.Path(path_type=Path))
@click.option(
    "--no-import-check", is_flag=True, help="Do not import the spec's functions here (workers have them)."
)
def submit(spec: Path, no_import_check: bool) -> None:
    """Enqueue the fan-out in SPEC on the configured broker and print its job id."""
    _add_import_paths(spec)
    client = _client(_settings())
    client.check_imports = not no_import_check
    handle = client.submit(spec)
    stdout.print(handle.job_id)


@main.command()
@click.argument("job_id")
@output_option
def status(job_id: str, output: str) -> None:
    """Show a job's status and the progress of its current round (a pipeline's: its tree of nodes)."""
    handle = _client(_settings()).get(job_id)
    meta = handle.progress()
    if output == "json":
        stdout.print(
            json.dumps({k: getattr(meta, k) for k in meta.__slots__}, default=str, indent=2), markup=False
        )
        return
    line = f"{meta.job_id} {meta.name}: {meta.status.value}, round {meta.round}: {meta.done}/{meta.size} done"
    if meta.failed:
        line += f", {meta.failed} failed"
    if meta.first_error:
        line += f"\nfirst error: {meta.first_error}"
    stdout.print(line, markup=False)
    pipeline = handle.pipeline()
    if pipeline is not None:
        store = handle.client.store
        tree = node_tree(
            pipeline, handle.branches(), store.outcomes(job_id), started=store.started_at(job_id)
        )
        stdout.print(tree)


@main.command()
@click.argument("job_id")
@output_option
@click.option("--wait", "wait_s", type=float, default=None, metavar="SECONDS",
              help="Wait up to this long for the job to finish.")  # fmt: skip
def result(job_id: str, output: str, wait_s: float | None) -> None:
    """Print a finished job's result (exit 1 if it failed or was cancelled)."""
    handle = _client(_settings()).get(job_id)
    job_result = handle.wait(wait_s) if wait_s is not None else handle.result()
    if job_result is None:
        raise click.ClickException(
            f"job {job_id} has not finished (status: {handle.status().value}); use --wait"
        )
    _print_result(job_result, output, handle.pipeline())
    sys.exit(_exit_code(job_result))


@main.command()
@click.argument("job_id")
def watch(job_id: str) -> None:
    """Follow a job live until it finishes: progress, tokens, cost, burn rate and each branch's state."""
    handle = _client(_settings()).get(job_id)
    job_result = _follow(handle, None, True, handle.pipeline())
    console.print(f"job {job_result.status.value}", markup=False)
    sys.exit(_exit_code(job_result))


@main.command()
@click.argument("job_id")
@click.option("--wait/--no-wait", default=False, help="Wait for the retry and print the new result.")
@output_option
def retry(job_id: str, wait: bool, output: str) -> None:
    """Re-run only the failed and cancelled branches of a finished job, then merge again."""
    handle = _client(_settings()).get(job_id)
    before = handle.result()
    handle.retry_failed()
    flagged = before.flagged if before else []
    console.print(f"retrying {len(flagged)} branch(es): {', '.join(flagged) or 'none'}", markup=False)
    if wait:
        pipeline = handle.pipeline()
        job_result = _follow(handle, None, console.is_terminal and output == "text", pipeline)
        _print_result(job_result, output, pipeline)
        sys.exit(_exit_code(job_result))


@main.command()
@click.argument("job_id")
def cancel(job_id: str) -> None:
    """Cancel a job: branches not started are skipped, running ones stop at their next check."""
    changed = _client(_settings()).get(job_id).cancel()
    console.print("cancelling" if changed else "already being cancelled", markup=False)


@main.command(context_settings={"ignore_unknown_options": True})
@click.option("--queues", "-Q", default=",".join(ALL_QUEUES), show_default=True, help="Queues to consume.")
@click.option("--pool", "-P", default="threads", show_default=True, help="threads, prefork, gevent or solo.")
@click.option(
    "--concurrency",
    "-c",
    type=int,
    default=None,
    help="Worker threads. Default per queue: fanflow.llm alone 500, fanflow.py and fanflow.control "
    "16, fanflow.agent 4 (a worker on several queues: the largest, model calls aside).",
)
@click.option("--loglevel", "-l", default="INFO", show_default=True)
@click.argument("celery_args", nargs=-1, type=click.UNPROCESSED)
def worker(
    queues: str, pool: str, concurrency: int | None, loglevel: str, celery_args: tuple[str, ...]
) -> None:
    """Start a Celery worker for fanflow's queues (extra arguments go to `celery worker`).

    \b
    Examples:
      fanflow worker -Q fanflow.llm                  # model calls: 500 threads
      fanflow worker -Q fanflow.py,fanflow.control   # Python callables and merges: 16 threads
    """
    sys.path.insert(0, str(Path.cwd()))
    if concurrency is None:
        concurrency = default_concurrency([q.strip() for q in queues.split(",") if q.strip()])
    app = _client(_settings()).app
    argv = ["worker", "-Q", queues, "-P", pool, "-c", str(concurrency), "--loglevel", loglevel, *celery_args]
    app.worker_main(argv)


@main.command()
@click.argument("file", type=click.Path(path_type=Path))
def graph(file: Path) -> None:
    """Print the pipeline in FILE (fanflow's format or the seed tutorial's) as a Mermaid flowchart.

    \b
    Examples:
      fanflow graph examples/tutorial/03_fan_out_fan_in.yml > graph.mmd
    """
    from fanflow.pipeline import load_pipeline, to_mermaid

    stdout.print(to_mermaid(load_pipeline(file).pipeline), markup=False, soft_wrap=True)


@main.group()
def dev() -> None:
    """Tools for trying fanflow offline."""


@dev.command("fake-llm")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=8089, show_default=True)
@click.option("--latency", type=float, default=0.0, show_default=True, help="Seconds each answer takes.")
def dev_fake_llm(host: str, port: int, latency: float) -> None:
    """Serve a fake model API (OpenAI chat completions and Anthropic messages) until Ctrl-C.

    \b
    Point fanflow's workers at it:
      export OPENAI_BASE_URL=http://127.0.0.1:8089/v1 OPENAI_API_KEY=fake
      export ANTHROPIC_BASE_URL=http://127.0.0.1:8089 ANTHROPIC_API_KEY=fake
    """
    from fanflow.dev.fake_llm import serve

    serve(host, port, latency)


def _limiter() -> Limiter:
    return limiter_of(_client(_settings()).app)


cli_limits.register(main, _limiter)

if __name__ == "__main__":
    main()
