"""Model calls on separate worker processes started as users start them: ``fanflow worker -Q
fanflow.llm,fanflow.control`` with no ``-c`` or ``-P`` (500 threads), calling a fake model server
that runs in this process (the workers get ``OPENAI_BASE_URL`` and ``ANTHROPIC_BASE_URL`` pointing
at it).

- A token and concurrency limit on a model's key holds across three workers, and the tokens each
  call reserved are settled to what the provider reported.
- A 429 with ``Retry-After`` cools the model's key down for every worker; the throttled calls are
  tried again without counting an attempt.
- The API keys reach the provider and nowhere else: not Redis (queues, unacked messages, results,
  the job store), not the published messages, not the workers' logs.
- A worker SIGKILLed with model calls in flight: its branches run again elsewhere, the job counts
  only the answers it recorded, and the merge runs once.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import secrets
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from fanflow import Client, Settings
from fanflow.app import limiter_of
from fanflow.dev.fake_llm import FakeLLM
from fanflow.ratelimit import Limit
from fanflow.result import JobResult, JobStatus, OutcomeStatus
from fanflow.spec import FanOut
from tests.e2e.conftest import WORKERS_KEY, StartWorker, WorkerProcess, worker_env

pytestmark = pytest.mark.e2e

LLM_QUEUES = "fanflow.llm,fanflow.control"
SECRET_OPENAI = f"sk-e2e-{secrets.token_hex(16)}"
SECRET_ANTHROPIC = f"sk-ant-e2e-{secrets.token_hex(16)}"
SECRETS = (SECRET_OPENAI, SECRET_ANTHROPIC)


class CliWorker(WorkerProcess):
    """``fanflow worker -Q fanflow.llm,fanflow.control -l INFO`` (no ``-c``, no ``-P``): the default
    pool and its default of 500 threads; stdout and stderr go to ``log_path``."""

    def __init__(self, name: str, *, env: dict[str, str], log_path: Path) -> None:
        self.name = name
        self.log_path = log_path
        argv = [
            sys.executable, "-m", "fanflow.cli", "worker", "-Q", LLM_QUEUES, "-l", "INFO",
            "-n", f"{name}@%h", "--without-mingle", "--without-gossip",
        ]  # fmt: skip
        self._spawn(argv, env)


StartCliWorkers = Callable[..., list[WorkerProcess]]


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeLLM]:
    with FakeLLM() as server:
        yield server


@pytest.fixture
def server(fake: FakeLLM) -> Iterator[FakeLLM]:
    fake.reset()
    fake.set_latency(0.0)
    yield fake
    fake.set_latency(0.0)


@pytest.fixture
def start_cli_workers(
    start_worker: StartWorker, request: pytest.FixtureRequest, tmp_path: Path
) -> StartCliWorkers:
    """``start_cli_workers(names, env=...)``: ``CliWorker``s, ready, on 500 threads; stopped (and their
    logs shown on a failure) with the ``start_worker`` fixture's."""
    started = request.node.stash[WORKERS_KEY]

    def start(names: list[str], *, env: dict[str, str]) -> list[WorkerProcess]:
        workers: list[WorkerProcess] = []
        for name in names:
            cli_worker = CliWorker(name, env=env, log_path=tmp_path / f"worker-{name}.log")
            started.append(cli_worker)
            workers.append(cli_worker)
        for worker in workers:
            worker.wait_ready()
            assert "concurrency: 500 (thread)" in worker.log(), f"{worker.name}: not the default pool"
        return workers

    return start


def _env(redis_url: str, key_prefix: str, server: FakeLLM, **fanflow: str) -> dict[str, str]:
    env = worker_env(redis_url, key_prefix)
    env.update(
        OPENAI_BASE_URL=f"{server.url}/v1", OPENAI_API_KEY=SECRET_OPENAI,
        ANTHROPIC_BASE_URL=server.url, ANTHROPIC_API_KEY=SECRET_ANTHROPIC,
    )  # fmt: skip
    env.update({f"FANFLOW_{name.upper()}": value for name, value in fanflow.items()})
    return env


def _client(redis_url: str, key_prefix: str) -> Client:
    return Client.from_settings(Settings(key_prefix=key_prefix).with_redis(redis_url))


def _llm(model: str, prompt: str, **extra: Any) -> dict[str, Any]:
    max_tokens = extra.pop("max_tokens", 64)
    return {"kind": "llm", "model": model, "prompt": prompt, "max_tokens": max_tokens, **extra}


def _fanout(name: str, subtasks: list[dict[str, Any]], **extra: Any) -> FanOut:
    return FanOut.model_validate({"name": f"{name}-{secrets.token_hex(3)}", "subtasks": subtasks, **extra})


def _prompt(request_body: Any) -> str:
    """The last user message of an OpenAI or Anthropic request body."""
    if not isinstance(request_body, dict):
        return ""
    users = [m for m in request_body.get("messages", []) if m.get("role") == "user"]
    content = users[-1]["content"] if users else ""
    return content if isinstance(content, str) else json.dumps(content)


def _workers_of(result: JobResult) -> set[str]:
    return {str(outcome.worker).split("@")[0] for outcome in result.outcomes}


@pytest.mark.timeout(120)
def test_a_token_and_concurrency_limit_on_the_model_holds_across_workers_and_settles(
    e2e_redis_url: str, key_prefix: str, server: FakeLLM, start_cli_workers: StartCliWorkers
) -> None:
    """30 calls, three workers of 500 threads, ``concurrency=4`` and a token limit that only lets the
    job finish if each call's reservation (prompt + ``max_tokens``) is settled to its real usage."""
    model = f"openai:gpt-4o-mini-{secrets.token_hex(3)}"
    concurrency, calls, max_tokens = 4, 30, 300
    client = _client(e2e_redis_url, key_prefix)
    limiter = limiter_of(client.app)
    # Reservations: ~320 tokens each, 9600 in all; real usage: a few dozen tokens per call.
    limiter.set_limit(Limit(key=model, tokens=2000, window_s=60, concurrency=concurrency))
    start_cli_workers(["w0", "w1", "w2"], env=_env(e2e_redis_url, key_prefix, server))
    server.set_latency(0.3)
    subtasks = [{"key": f"k{index:02d}", "run": _llm(model, f"Count me {index}", max_tokens=max_tokens)}
                for index in range(calls)]  # fmt: skip
    started = time.monotonic()
    result = client.submit(_fanout("limits", subtasks)).wait(timeout=60)
    elapsed = time.monotonic() - started

    assert result.status is JobStatus.SUCCEEDED, result.error
    assert all(o.status is OutcomeStatus.SUCCEEDED and o.attempts == 1 for o in result.outcomes)
    assert result.usage.calls == calls == server.count
    assert calls * max_tokens > 2000 >= result.usage.total_tokens  # only settling lets it finish
    assert 2 <= server.max_in_flight <= concurrency
    status = limiter.status(model)
    assert status is not None
    # Reserved on one worker's thread, settled there; the window holds what the provider reported.
    assert status.tokens_in_window == result.usage.total_tokens
    assert status.requests_in_window == calls
    assert status.in_flight == 0
    assert result.usage_by_model[model].total_tokens == result.usage.total_tokens
    print(f"\n{calls} calls in {elapsed:.1f}s, peak {server.max_in_flight} in flight, "
          f"{result.usage.total_tokens} tokens, workers {sorted(_workers_of(result))}")  # fmt: skip


@pytest.mark.timeout(120)
def test_a_429_cools_the_model_down_for_every_worker(
    e2e_redis_url: str, key_prefix: str, server: FakeLLM, start_cli_workers: StartCliWorkers
) -> None:
    """The first three requests are answered 429 with ``Retry-After: 1``; a second job submitted
    once the cool-down is in Redis calls the model only when it ended, from whichever worker."""
    model = f"openai:gpt-4o-mini-{secrets.token_hex(3)}"
    throttled = 3
    client = _client(e2e_redis_url, key_prefix)
    limiter = limiter_of(client.app)
    limiter.set_limit(Limit(key=model, requests=1000, window_s=1.0))
    start_cli_workers(["w0", "w1", "w2"], env=_env(e2e_redis_url, key_prefix, server))
    server.fail_next(throttled, status=429, retry_after_s=1.0)
    server.set_latency(0.1)

    trigger = [{"key": f"t{index}", "run": _llm(model, f"first {index}")} for index in range(throttled)]
    first = client.submit(_fanout("throttled", trigger))
    deadline = time.monotonic() + 30
    cooldown_until = None
    while time.monotonic() < deadline:
        status = limiter.status(model)
        if server.count >= throttled and status is not None and status.cooldown_s > 0:
            cooldown_until = time.time() + status.cooldown_s
            break
        time.sleep(0.01)
    assert cooldown_until is not None, f"no cool-down after {server.count} requests"
    waiting = [{"key": f"a{index:02d}", "run": _llm(model, f"second {index}")} for index in range(24)]
    second = client.submit(_fanout("after", waiting))
    results = [first.wait(timeout=60), second.wait(timeout=60)]

    for result in results:
        assert result.status is JobStatus.SUCCEEDED, result.error
        assert all(o.status is OutcomeStatus.SUCCEEDED and o.attempts == 1 for o in result.outcomes)
    requests = server.requests
    assert len(requests) == server.count == throttled + 3 + 24  # each throttled call asked again once
    # The first three were answered 429: each cooled the key down from its answer for 1 s. A call
    # admitted in the moment between the answer and the cool-down reaching Redis may start just
    # after it (0.15 s of slack); none starts later in that second.
    answered_429 = [r.started_at for r in requests[:throttled]]
    for at in answered_429:
        during = [r for r in requests if at + 0.15 <= r.started_at < at + 1.0]
        assert not during, f"{len(during)} requests during the cool-down after the 429 at {at:.3f}"
    second_starts = [r.started_at for r in requests if _prompt(r.body).startswith("second ")]
    assert len(second_starts) == 24
    assert min(second_starts) >= cooldown_until - 0.05, min(second_starts) - cooldown_until
    spread = _workers_of(results[1])
    print(
        f"\n429s at +0, +{answered_429[-1] - answered_429[0]:.3f}s; the second job's calls started "
        f"{min(second_starts) - answered_429[-1]:.2f}s after the last, on workers {sorted(spread)}"
    )
    assert len(spread) >= 2


def _base64_texts(text: str) -> Iterator[str]:
    """Every base64 run in ``text`` (16 characters or more) that decodes to UTF-8, decoded."""
    for match in re.finditer(r"[A-Za-z0-9+/]{16,}={0,2}", text):
        token = match.group(0)
        try:
            yield base64.b64decode(token + "=" * (-len(token) % 4), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError, ValueError):
            continue


def _with_decoded(text: str) -> str:
    """``text`` plus every base64 body inside it decoded (kombu sends a task's body in base64)."""
    parts = [text]
    for decoded in _base64_texts(text):
        parts.append(_with_decoded(decoded))
    return "\n".join(parts)


def _text(value: Any) -> str:
    """A Redis reply as text: bytes decoded, containers flattened one item a line."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, dict):
        return "\n".join(f"{_text(name)}\n{_text(item)}" for name, item in value.items())
    if isinstance(value, list | tuple):
        return "\n".join(_text(item) for item in value)
    return str(value)


def _redis_dump(client: redis.Redis) -> dict[str, str]:
    """Every key of this Redis and its value, whatever the type, as text (base64 bodies decoded)."""
    dump: dict[str, str] = {}
    for raw in client.scan_iter(count=1000):
        name, kind = _text(raw), _text(client.type(raw))
        value: Any
        if kind == "string":
            value = client.get(raw)
        elif kind == "hash":
            value = client.hgetall(raw)
        elif kind == "list":
            value = client.lrange(raw, 0, -1)
        elif kind == "set":
            value = sorted(client.smembers(raw))
        elif kind == "zset":
            value = client.zrange(raw, 0, -1, withscores=True)
        elif kind == "stream":
            value = client.xrange(raw)
        elif kind == "none":  # expired since the scan
            continue
        else:
            raise AssertionError(f"{name}: a {kind} this test cannot read")
        dump[name] = _with_decoded(f"{name}\n{_text(value)}")
    return dump


def _assert_no_secret(where: str, texts: dict[str, str]) -> None:
    leaks = sorted(name for name, text in texts.items() if any(secret in text for secret in SECRETS))
    assert not leaks, f"an API key in {where}: {leaks}"


@pytest.mark.timeout(120)
def test_api_keys_reach_the_provider_and_nothing_else(
    e2e_redis_url: str,
    key_prefix: str,
    server: FakeLLM,
    start_cli_workers: StartCliWorkers,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Both providers, a 401, a 500 and a synthesis; then every Redis key (queues as published,
    unacked messages while calls run, results and job store after), and the workers' logs."""
    for name, value in _env(e2e_redis_url, key_prefix, server).items():
        if name.startswith(("OPENAI_", "ANTHROPIC_")):
            monkeypatch.setenv(name, value)  # the submitting process has the keys too
    client = _client(e2e_redis_url, key_prefix)
    broker = redis.Redis.from_url(e2e_redis_url)
    marker = f"secret-scan-{secrets.token_hex(4)}"
    openai, anthropic = "openai:gpt-4o-mini", "anthropic:claude-haiku-4-5"
    slow = f"{marker} {{key}} [[fake:latency=1.5]]"
    spec = _fanout(
        "secrets",
        [
            {"key": "oa", "run": _llm(openai, slow)},
            {"key": "an", "run": _llm(anthropic, slow)},
            {"key": "denied", "run": _llm(openai, f"{marker} [[fake:status=401]]")},
            {"key": "down", "retry": {"attempts": 2, "backoff_s": 0.1},
             "run": _llm(anthropic, f"{marker} [[fake:status=500]]")},
        ],
        merge={"strategy": "synthesize", "run": _llm("openai:gpt-4o", "Combine:\n{results}\n{flagged}")},
        failure={"policy": "best_effort"},
    )  # fmt: skip

    handle = client.submit(spec)  # no worker yet: the messages wait in the queue as published
    published = {name: text for name, text in _redis_dump(broker).items() if name.startswith("fanflow.llm")}
    # The task's body (its arguments and the chord) is base64 in the envelope: read decoded.
    assert any(handle.job_id in text and '"chord"' in text for text in published.values()), published
    _assert_no_secret("the published messages", published)

    workers = start_cli_workers(["w0", "w1"], env=_env(e2e_redis_url, key_prefix, server))
    deadline = time.monotonic() + 30
    while server.in_flight < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.in_flight >= 2, "the slow calls never reached the model server"
    while_running = _redis_dump(broker)
    assert any(name.startswith("unacked") and handle.job_id in text for name, text in while_running.items())
    _assert_no_secret("Redis while calls ran", while_running)

    result = handle.wait(timeout=60)
    assert result.status is JobStatus.PARTIAL, result.error
    assert result.flagged == ["denied", "down"]
    denied, down = result.outcome("denied"), result.outcome("down")
    assert denied.error is not None and "401" in denied.error.message, denied.error
    assert down.error is not None and down.attempts == 2, down.error
    assert isinstance(result.merged, str) and result.merged
    assert result.merge_usage.calls == 1
    for worker in workers:
        worker.stop()
    after = _redis_dump(broker)
    assert any(marker in text for text in after.values())  # the job store, read by this scan
    assert any(handle.job_id in text for name, text in after.items() if name.startswith("celery-task-meta"))
    _assert_no_secret("Redis after the job", after)
    _assert_no_secret("the result", {"result": result.model_dump_json()})
    logs = {worker.name: worker.log() for worker in workers}
    assert all("fanflow.subtask" in log for log in logs.values()), "a worker logged no task"
    _assert_no_secret("the workers' logs", logs)

    # The provider did get them, in the headers each API expects.
    to_openai = [r for r in server.requests if r.path == "/v1/chat/completions"]
    to_anthropic = [r for r in server.requests if r.path == "/v1/messages"]
    assert to_openai and all(r.headers.get("authorization") == f"Bearer {SECRET_OPENAI}" for r in to_openai)
    assert to_anthropic and all(r.headers.get("x-api-key") == SECRET_ANTHROPIC for r in to_anthropic)
    print(f"\nscanned {len(after)} Redis keys, {sum(len(log) for log in logs.values())} chars of logs")


def _received(worker: WorkerProcess, job_id: str) -> set[str]:
    """Keys of the job's branches whose messages ``worker`` logged as received."""
    pattern = re.compile(rf"\[{re.escape(job_id)}\.r\d+\.([^\]\s]+)\] received")
    return set(pattern.findall(worker.log()))


@pytest.mark.timeout(150)
def test_a_worker_killed_during_model_calls_its_branches_run_again_and_merge_once(
    e2e_redis_url: str, key_prefix: str, server: FakeLLM, start_cli_workers: StartCliWorkers
) -> None:
    """Calls of 3 s; the worker running some is SIGKILLed; their leases (6 s here) lapse and the
    sweeper delivers them again."""
    model = f"openai:gpt-4o-mini-{secrets.token_hex(3)}"
    keys = [f"b{index}" for index in range(6)]
    client = _client(e2e_redis_url, key_prefix)
    limiter = limiter_of(client.app)
    limiter.set_limit(Limit(key=model, concurrency=len(keys) * 2))
    env = _env(e2e_redis_url, key_prefix, server, lease_s="6", sweep_interval_s="1")
    workers = start_cli_workers(["w0", "w1", "w2"], env=env)
    server.set_latency(3.0)
    spec = _fanout(
        "killed", [{"key": key, "run": _llm(model, "Slow {key}")} for key in keys],
        merge={"strategy": "concatenate"},
    )  # fmt: skip
    handle = client.submit(spec)
    deadline = time.monotonic() + 30
    while server.in_flight < len(keys) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.in_flight == len(keys), f"{server.in_flight} calls in flight"
    victim = max(workers, key=lambda worker: len(_received(worker, handle.job_id)))
    lost = _received(victim, handle.job_id)
    assert lost
    victim.kill()
    killed_at = time.monotonic()
    result = handle.wait(timeout=90)
    finished_after = time.monotonic() - killed_at

    assert result.status is JobStatus.SUCCEEDED, result.error
    assert [o.key for o in result.outcomes] == keys
    assert all(o.status is OutcomeStatus.SUCCEEDED and o.attempts >= 1 for o in result.outcomes)
    assert not any(str(result.outcome(key).worker).startswith(f"{victim.name}@") for key in lost)
    # The killed calls were asked once more each; the job counts only the answers it recorded.
    assert server.count == len(keys) + len(lost)
    assert len(keys) <= result.usage.calls <= server.count
    assert result.usage.calls == sum(o.usage.calls for o in result.outcomes)
    assert handle.progress().merges == 1
    status = limiter.status(model)
    assert status is not None and status.in_flight == 0  # the dead worker's slots lapsed too
    print(
        f"\nkilled {victim.name} with {len(lost)} of {len(keys)} calls in flight; job finished "
        f"{finished_after:.1f}s later; {server.count} requests, {result.usage.calls} counted"
    )


@pytest.mark.timeout(90)
def test_calls_refused_by_reservations_in_flight_run_once_those_settle(
    e2e_redis_url: str, key_prefix: str, server: FakeLLM, start_cli_workers: StartCliWorkers
) -> None:
    """tokens=1400 per minute: four calls reserving ~315 each fill it, but settle to ~15 each 0.3 s
    later; the other calls fit then and the job takes a few seconds, not a minute."""
    model = f"openai:gpt-4o-mini-{secrets.token_hex(3)}"
    client = _client(e2e_redis_url, key_prefix)
    limiter_of(client.app).set_limit(Limit(key=model, tokens=1400, window_s=60, concurrency=4))
    start_cli_workers(["w0"], env=_env(e2e_redis_url, key_prefix, server))
    server.set_latency(0.3)
    subtasks = [{"key": f"k{index:02d}", "run": _llm(model, f"Count me {index}", max_tokens=300)}
                for index in range(12)]  # fmt: skip
    result = client.submit(_fanout("reserved", subtasks)).wait(timeout=10)
    assert result.status is JobStatus.SUCCEEDED, result.error
    assert result.usage.total_tokens < 1400 - 315


@pytest.mark.timeout(150)
def test_a_worker_killed_mid_batch_its_branches_run_again_and_merge_once(
    e2e_redis_url: str, key_prefix: str, server: FakeLLM, start_cli_workers: StartCliWorkers
) -> None:
    """A fan-out big enough to go in batches (fanflow.batching): the worker running some batches
    is SIGKILLed with their calls in flight; the batches come back whole, the job store runs only
    the branches without an outcome, and the merge runs once."""
    from fanflow.batching import MIN_BRANCHES

    keys = [f"q{index:03d}" for index in range(MIN_BRANCHES + 20)]
    model = f"openai:gpt-4o-mini-{secrets.token_hex(3)}"
    client = _client(e2e_redis_url, key_prefix)
    env = _env(e2e_redis_url, key_prefix, server, lease_s="6", sweep_interval_s="1")
    workers = start_cli_workers(["w0", "w1"], env=env)
    server.set_latency(3.0)
    spec = _fanout(
        "batched-kill",
        [{"key": key, "run": _llm(model, "Slow {key}")} for key in keys],
    )
    handle = client.submit(spec)
    deadline = time.monotonic() + 30
    while server.in_flight < len(keys) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.in_flight == len(keys), f"{server.in_flight} calls in flight"
    victim = max(workers, key=lambda worker: worker.log().count("fanflow.batch["))
    assert "fanflow.batch[" in victim.log()
    victim.kill()
    result = handle.wait(timeout=90)
    assert result.status is JobStatus.SUCCEEDED, result.error
    assert [o.key for o in result.outcomes] == keys
    assert not any(str(o.worker).startswith(f"{victim.name}@") for o in result.outcomes)
    assert len(keys) < server.count <= 2 * len(keys)  # the victim's calls were asked again
    assert result.usage.calls == len(keys)  # counted once each, with the outcome
    assert handle.progress().merges == 1
