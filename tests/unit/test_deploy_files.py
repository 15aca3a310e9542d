"""Static checks of the deployment files: docker-compose.yml and the Kubernetes manifests under deploy/.

Nothing here talks to Docker or a cluster: the files are parsed as YAML and checked for the properties
the deployment relies on (Redis durability and auth, one worker per queue, KEDA scaling, Flower auth,
and no literal secrets).
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DEPLOY_DIR = ROOT / "deploy"
QUEUES = frozenset({"fanflow.llm", "fanflow.agent", "fanflow.py", "fanflow.control"})

# Environment variables whose value is a credential.
SECRET_ENV_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|BASIC_AUTH|REDISCLI_AUTH|API_KEY", re.IGNORECASE)
# Command-line options whose value is a credential (`--opt value` or `--opt=value`).
SECRET_OPTIONS = frozenset({"--requirepass", "--masterauth", "--basic_auth", "--basic-auth"})
# [user]:password@ in a URL; group 1 is the password, which may be a reference containing spaces.
URL_CREDENTIALS = re.compile(
    r"[a-z][a-z0-9+.\-]*://[^:/@\s]*:((?:\$\{[^}]*\}|\$\([^)]*\)|[^/@\s])+)@", re.IGNORECASE
)
# Variable references: compose `${NAME}`, `${NAME:?msg}`, `${NAME:-default}` and Kubernetes `$(NAME)`.
REFERENCE = re.compile(
    r"\$\{(?P<compose>[A-Za-z_]\w*)(?P<modifier>:?[-?][^}]*)?\}|\$\((?P<k8s>[A-Za-z_]\w*)\)"
)


# --------------------------------------------------------------------------------------------- helpers


def _load_compose() -> dict[str, Any]:
    """The parsed docker-compose.yml (YAML merge keys resolved by the safe loader)."""
    data = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    assert isinstance(data, dict), "docker-compose.yml must be a mapping"
    return data


def _deploy_files() -> list[Path]:
    """Every YAML file under deploy/, sorted for stable test output."""
    return sorted(p for p in DEPLOY_DIR.rglob("*") if p.suffix in {".yaml", ".yml"})


def _load_k8s_docs() -> list[dict[str, Any]]:
    """Every non-empty YAML document under deploy/ (manifests and kustomization files alike)."""
    docs: list[dict[str, Any]] = []
    for path in _deploy_files():
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if doc is not None:
                assert isinstance(doc, dict), f"{path}: every YAML document must be a mapping"
                docs.append(doc)
    return docs


def _of_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    """The documents of one Kubernetes kind."""
    return [doc for doc in docs if doc.get("kind") == kind]


def _named(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    """The one document of `kind` called `name`."""
    found = [doc for doc in _of_kind(docs, kind) if doc.get("metadata", {}).get("name") == name]
    assert len(found) == 1, f"expected exactly one {kind} named {name!r}, found {len(found)}"
    return found[0]


def _strings(node: Any) -> Iterator[str]:
    """Every string value in a parsed YAML tree (mapping keys excluded)."""
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for value in node.values():
            yield from _strings(value)
    elif isinstance(node, list):
        for item in node:
            yield from _strings(item)


def _only_references(value: str) -> bool:
    """True if `value` is made of variable references, with at most ':' left between them.

    A reference with a default (`${REDIS_PASSWORD:-x}`) counts as a literal: the default is a password.
    """
    if not REFERENCE.search(value):
        return False
    for match in REFERENCE.finditer(value):
        modifier = match.group("modifier") or ""
        if modifier.lstrip(":").startswith("-"):
            return False
    return REFERENCE.sub("", value).strip(":") == ""


def _references_with_default_ok(value: str) -> bool:
    """Like `_only_references`, but a default is allowed on variables that are not secret (a user name)."""
    for match in REFERENCE.finditer(value):
        name = match.group("compose") or match.group("k8s") or ""
        modifier = match.group("modifier") or ""
        if modifier.lstrip(":").startswith("-") and SECRET_ENV_NAME.search(name):
            return False
    return REFERENCE.search(value) is not None and REFERENCE.sub("", value).strip(":") == ""


def _argv(container: dict[str, Any]) -> list[str]:
    """A compose service's or Kubernetes container's command line as a token list."""
    tokens: list[str] = []
    for key in ("command", "args"):
        value = container.get(key)
        if isinstance(value, str):
            tokens.extend(shlex.split(value))
        elif isinstance(value, list):
            tokens.extend(str(item) for item in value)
    return tokens


def _option(argv: list[str], name: str) -> str | None:
    """The value of `name` in `argv`, given as `name value` or `name=value`; None if absent."""
    for index, token in enumerate(argv):
        if token == name and index + 1 < len(argv):
            return argv[index + 1]
        if token.startswith(name + "="):
            return token.split("=", 1)[1]
    return None


def _celery_worker_queue(argv: list[str]) -> str | None:
    """The `-Q` queue of a `celery -A workers worker ...` command line; None if it is not one."""
    head = ["celery", "-A", "workers", "worker"]
    for start in range(len(argv) - len(head) + 1):
        if argv[start : start + len(head)] == head:
            return _option(argv[start:], "-Q")
    return None


def _compose_env(service: dict[str, Any]) -> dict[str, str]:
    """A compose service's environment as a mapping (both the mapping and the list form)."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        pairs = (str(item).partition("=") for item in env)
        return {key: value for key, _, value in pairs}
    return {str(key): str(value) for key, value in env.items()}


def _pod_spec(doc: dict[str, Any]) -> dict[str, Any]:
    """The pod spec of a Deployment or StatefulSet."""
    spec = doc["spec"]["template"]["spec"]
    assert isinstance(spec, dict)
    return spec


def _containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """The containers of a Deployment or StatefulSet."""
    containers = _pod_spec(doc)["containers"]
    assert isinstance(containers, list)
    return containers


def _k8s_env(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """A container's env entries by name."""
    return {entry["name"]: entry for entry in container.get("env") or []}


def _k8s_worker_queues(docs: list[dict[str, Any]]) -> dict[str, str]:
    """Deployment name -> the queue its `celery -A workers worker` container consumes."""
    queues: dict[str, str] = {}
    for doc in _of_kind(docs, "Deployment"):
        for container in _containers(doc):
            queue = _celery_worker_queue(_argv(container))
            if queue is not None:
                queues[doc["metadata"]["name"]] = queue
    return queues


# --------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    """The parsed docker-compose.yml."""
    return _load_compose()


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The compose services by name."""
    result = compose["services"]
    assert isinstance(result, dict)
    return result


@pytest.fixture(scope="module")
def k8s() -> list[dict[str, Any]]:
    """Every YAML document under deploy/."""
    return _load_k8s_docs()


# --------------------------------------------------------------------------------------------- checkers


@pytest.mark.parametrize(
    ("text", "literal"),
    [
        ("redis://:${REDIS_PASSWORD:?set REDIS_PASSWORD}@redis:6379/0", False),
        ("redis://:$(REDIS_PASSWORD)@redis:6379/0", False),
        ("redis://:hunter2@redis:6379/0", True),
        ("redis://default:${REDIS_PASSWORD:-hunter2}@redis:6379/0", True),
    ],
)
def test_url_check_catches_literal_passwords(text: str, literal: bool) -> None:
    """The URL check finds the password part, references included, and flags literals and defaults."""
    match = URL_CREDENTIALS.search(text)
    assert match is not None
    assert _only_references(match.group(1)) is not literal


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("${FLOWER_USER:-admin}:${FLOWER_PASSWORD:?set FLOWER_PASSWORD}", True),
        ("${FLOWER_BASIC_AUTH}", True),
        ("admin:${FLOWER_PASSWORD}", False),
        ("${FLOWER_USER}:${FLOWER_PASSWORD:-secret}", False),
        ("admin:secret", False),
    ],
)
def test_reference_check_rejects_literals(value: str, ok: bool) -> None:
    """Credential values pass only when built from references, with defaults only on non-secret names."""
    assert _references_with_default_ok(value) is ok


# --------------------------------------------------------------------------------------------- compose


def test_compose_redis_has_password_aof_and_noeviction(services: dict[str, dict[str, Any]]) -> None:
    """Redis in compose requires a password, persists with AOF on a volume and never evicts keys."""
    redis = services["redis"]
    argv = _argv(redis)
    password = _option(argv, "--requirepass")
    assert password is not None and _only_references(password), "--requirepass must be a ${VAR} reference"
    assert _option(argv, "--appendonly") == "yes"
    assert _option(argv, "--maxmemory-policy") == "noeviction"
    assert any(str(volume).endswith(":/data") for volume in redis.get("volumes", [])), "AOF needs a volume"
    assert "healthcheck" in redis


def test_compose_workers_cover_every_queue(services: dict[str, dict[str, Any]]) -> None:
    """Each worker-* service runs `celery -A workers worker -Q <queue>`, and every queue has one."""
    workers = {name: svc for name, svc in services.items() if name.startswith("worker")}
    assert workers, "no worker services"
    queues: dict[str, str] = {}
    for name, service in workers.items():
        queue = _celery_worker_queue(_argv(service))
        assert queue in QUEUES, f"{name}: expected `celery -A workers worker -Q <one of {sorted(QUEUES)}>`"
        queues[name] = queue
    assert set(queues.values()) == QUEUES


def test_compose_workers_are_scalable_and_not_root(services: dict[str, dict[str, Any]]) -> None:
    """Worker services can be `--scale`d (no fixed container name or host port) and never force root."""
    for name, service in services.items():
        if not name.startswith("worker"):
            continue
        assert "container_name" not in service, f"{name}: container_name prevents --scale"
        assert not service.get("ports"), f"{name}: a published port prevents --scale"
        assert "C_FORCE_ROOT" not in _compose_env(service), f"{name}: workers must not run as root"


def test_compose_flower_uses_basic_auth(services: dict[str, dict[str, Any]]) -> None:
    """Flower runs from the workers app on port 5555 with basic auth taken from the environment."""
    flower = services["flower"]
    argv = _argv(flower)
    assert argv[:4] == ["celery", "-A", "workers", "flower"]
    assert _option(argv, "--port") == "5555"
    auth = _option(argv, "--basic_auth") or _compose_env(flower).get("FLOWER_BASIC_AUTH")
    assert auth is not None, "Flower needs --basic_auth or FLOWER_BASIC_AUTH"
    assert _references_with_default_ok(auth), "Flower credentials must be ${VAR} references"


def test_compose_has_no_literal_secrets(services: dict[str, dict[str, Any]]) -> None:
    """Credentials in compose are only variable references: env values, URLs and command options."""
    for name, service in services.items():
        for key, value in _compose_env(service).items():
            if SECRET_ENV_NAME.search(key):
                assert _references_with_default_ok(value), f"{name}: {key} must be a ${{VAR}} reference"
        for text in _strings(service):
            for match in URL_CREDENTIALS.finditer(text):
                assert _only_references(match.group(1)), f"{name}: literal password in URL {text!r}"
        argv = _argv(service)
        for option in SECRET_OPTIONS:
            value = _option(argv, option)
            if value is not None:
                assert _references_with_default_ok(value), f"{name}: {option} must be a ${{VAR}} reference"


def test_env_files_are_ignored_and_examples_exist() -> None:
    """Real secret files are git-ignored; only their *.example templates live in the repository."""
    ignored = {line.strip() for line in (ROOT / ".gitignore").read_text(encoding="utf-8").splitlines()}
    assert ".env" in ignored
    assert "deploy/base/secrets.env" in ignored
    assert (ROOT / ".env.example").is_file()
    assert (DEPLOY_DIR / "base" / "secrets.env.example").is_file()


# --------------------------------------------------------------------------------------------- kubernetes


def test_deploy_yaml_parses() -> None:
    """deploy/ holds YAML files, and all of them parse."""
    assert _deploy_files(), "no YAML under deploy/"
    assert _load_k8s_docs()


def test_k8s_redis_has_password_aof_and_noeviction(k8s: list[dict[str, Any]]) -> None:
    """The Redis StatefulSet takes its password from the Secret, keeps an AOF on a PVC, never evicts."""
    redis = _named(k8s, "StatefulSet", "redis")
    (container,) = _containers(redis)
    argv = _argv(container)
    password = _option(argv, "--requirepass")
    assert password is not None and _only_references(password), "--requirepass must be a $(VAR) reference"
    variable = password.removeprefix("$(").removesuffix(")")
    assert "secretKeyRef" in _k8s_env(container)[variable].get("valueFrom", {})
    assert _option(argv, "--appendonly") == "yes"
    assert _option(argv, "--maxmemory-policy") == "noeviction"
    claims = {claim["metadata"]["name"] for claim in redis["spec"].get("volumeClaimTemplates", [])}
    mounts = {mount["name"]: mount["mountPath"] for mount in container.get("volumeMounts", [])}
    assert any(mounts.get(claim) == "/data" for claim in claims), "the AOF must live on a PVC at /data"


def test_k8s_workers_cover_every_queue(k8s: list[dict[str, Any]]) -> None:
    """Every worker Deployment consumes one of the four queues, each queue has one, and pods are sane."""
    queues = _k8s_worker_queues(k8s)
    assert set(queues.values()) == QUEUES
    for name in queues:
        doc = _named(k8s, "Deployment", name)
        pod = _pod_spec(doc)
        assert pod.get("terminationGracePeriodSeconds", 30) >= 60, f"{name}: too short for a warm shutdown"
        assert pod.get("securityContext", {}).get("runAsNonRoot") is True, f"{name}: must run as non-root"
        for container in _containers(doc):
            resources = container.get("resources", {})
            assert resources.get("requests") and resources.get("limits"), f"{name}: requests and limits"
            assert "livenessProbe" in container, f"{name}: no liveness probe"
            assert "C_FORCE_ROOT" not in _k8s_env(container), f"{name}: workers must not run as root"


def test_k8s_every_queue_has_a_keda_scaled_object(k8s: list[dict[str, Any]]) -> None:
    """Each queue's worker Deployment is scaled by KEDA on that queue's Redis list, with Secret auth."""
    deployment_queue = _k8s_worker_queues(k8s)
    auths = {doc["metadata"]["name"]: doc for doc in _of_kind(k8s, "TriggerAuthentication")}
    scaled: dict[str, str] = {}
    for obj in _of_kind(k8s, "ScaledObject"):
        target = obj["spec"]["scaleTargetRef"]["name"]
        for trigger in obj["spec"]["triggers"]:
            if trigger["type"] != "redis":
                continue
            queue = trigger["metadata"]["listName"]
            assert deployment_queue.get(target) == queue, f"{obj['metadata']['name']}: target/queue mismatch"
            auth = auths[trigger["authenticationRef"]["name"]]
            assert auth["spec"]["secretTargetRef"], "TriggerAuthentication must read the Secret"
            assert "password" not in trigger["metadata"], "the Redis password belongs in the Secret"
            scaled[queue] = target
    assert set(scaled) == QUEUES


def test_k8s_flower_uses_basic_auth_from_the_secret(k8s: list[dict[str, Any]]) -> None:
    """Flower runs from the workers app with basic auth from the Secret, behind a ClusterIP Service."""
    flower = _named(k8s, "Deployment", "flower")
    (container,) = _containers(flower)
    argv = _argv(container)
    assert argv[:4] == ["celery", "-A", "workers", "flower"]
    env = _k8s_env(container)
    flag = _option(argv, "--basic_auth")
    if flag is not None:
        assert _only_references(flag)
        flag_var = flag.removeprefix("$(").removesuffix(")")
        assert "secretKeyRef" in env[flag_var].get("valueFrom", {})
    else:
        assert "secretKeyRef" in env["FLOWER_BASIC_AUTH"].get("valueFrom", {}), (
            "FLOWER_BASIC_AUTH from Secret"
        )
    service = _named(k8s, "Service", "flower")
    assert service["spec"].get("type", "ClusterIP") == "ClusterIP", "/metrics is unauthenticated in Flower"


def test_k8s_has_no_literal_secrets(k8s: list[dict[str, Any]]) -> None:
    """No Secret data in manifests, no generator literals, and credentials only via secretKeyRef/$(VAR)."""
    assert not _of_kind(k8s, "Secret"), "Secrets come from the secretGenerator, not from manifests"
    for doc in _of_kind(k8s, "Kustomization"):
        for generator in doc.get("secretGenerator", []):
            assert not generator.get("literals"), "secretGenerator must read a git-ignored env file"
    for doc in k8s:
        for text in _strings(doc):
            for match in URL_CREDENTIALS.finditer(text):
                assert _only_references(match.group(1)), f"literal password in URL {text!r}"
        if doc.get("kind") not in {"Deployment", "StatefulSet"}:
            continue
        for container in _containers(doc):
            for name, entry in _k8s_env(container).items():
                if SECRET_ENV_NAME.search(name):
                    assert "value" not in entry, f"{doc['metadata']['name']}: {name} must use secretKeyRef"
            argv = _argv(container)
            for option in SECRET_OPTIONS:
                value = _option(argv, option)
                if value is not None:
                    assert _only_references(value), f"{doc['metadata']['name']}: {option} must be $(VAR)"
