"""Model providers: the built-in ones, the ones settings declare, and the price overrides.

A model id is ``provider:model`` (``openai:gpt-4o-mini``). The provider says which wire API it
speaks (OpenAI chat completions or Anthropic messages), its base URL and the *name* of the
environment variable holding its key. Keys are read from the environment when a call is made,
never stored here, and never put into a message or a log.

Built-ins (their base URLs and keys come from the variables the official SDKs read):

- ``openai``: ``OPENAI_BASE_URL`` (default ``https://api.openai.com/v1``), key ``OPENAI_API_KEY``.
- ``anthropic``: ``ANTHROPIC_BASE_URL`` (default ``https://api.anthropic.com``, the host root; the
  path ``/v1/messages`` is added), key ``ANTHROPIC_API_KEY``.
- ``ollama``: ``OLLAMA_BASE_URL`` (default ``http://localhost:11434/v1``), key ``OLLAMA_API_KEY``
  if set (optional), free.

``configure`` (called once at startup from the settings) declares more providers, e.g. a vLLM
server, and overrides prices; it replaces any earlier configuration.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from fanflow.errors import ConfigError

__all__ = [
    "Price",
    "Provider",
    "ProviderConfig",
    "config_generation",
    "configure",
    "declare_job_providers",
    "known_providers",
    "price_overrides",
    "provider",
    "split_model_id",
]

WireAPI = Literal["openai", "anthropic"]
_M = TypeVar("_M", bound=BaseModel)


@dataclass(frozen=True, slots=True)
class Provider:
    """A provider as a call uses it.

    Attributes:
        name: ``openai``, ``anthropic``, ``ollama`` or a declared name.
        api: the wire API it speaks.
        base_url: where to send calls (no trailing slash). OpenAI-style URLs include ``/v1``;
            Anthropic-style ones are the host root.
        api_key_env: name of the environment variable holding the key, if any.
        free: local servers: cost 0, no "unknown price" warning, and the key is optional.
    """

    name: str
    api: WireAPI
    base_url: str
    api_key_env: str | None
    free: bool = False

    @property
    def key_required(self) -> bool:
        """Whether a call must fail with ``ConfigError`` when the key variable is unset."""
        return self.api_key_env is not None and not self.free


class ProviderConfig(BaseModel):
    """A provider declared in settings (``FANFLOW_PROVIDERS``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    api: WireAPI = "openai"
    base_url: str = Field(min_length=1)
    api_key_env: str | None = None
    free: bool = False


class Price(BaseModel):
    """USD per million tokens. Unset cache prices default per API (see ``pricing.cost_usd``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    input: float = Field(ge=0)
    output: float = Field(ge=0)
    cached_input: float | None = Field(None, ge=0)
    cache_write: float | None = Field(None, ge=0)


# (api, base URL variable, default base URL, key variable, free)
_BUILTINS: dict[str, tuple[WireAPI, str, str, str, bool]] = {
    "openai": ("openai", "OPENAI_BASE_URL", "https://api.openai.com/v1", "OPENAI_API_KEY", False),
    "anthropic": (
        "anthropic", "ANTHROPIC_BASE_URL", "https://api.anthropic.com", "ANTHROPIC_API_KEY", False,
    ),
    "ollama": ("openai", "OLLAMA_BASE_URL", "http://localhost:11434/v1", "OLLAMA_API_KEY", True),
}  # fmt: skip

_lock = threading.Lock()
_declared: dict[str, Provider] = {}
#: Providers a pipeline declared (keyless, never overriding a built-in or a configured one).
_from_jobs: dict[str, Provider] = {}
_prices: dict[str, Price] = {}
#: Bumped by ``configure`` so caches derived from the configuration (prices) know to start over.
_generation = 0


def configure(
    *,
    providers: Mapping[str, ProviderConfig | Mapping[str, object]] | None = None,
    prices: Mapping[str, Price | Mapping[str, object]] | None = None,
) -> None:
    """Declare providers and price overrides for this process, replacing earlier ones.

    Args:
        providers: name -> config. A declared name may also override a built-in.
        prices: ``provider:model`` -> price; these win over the built-in table.

    Raises:
        ConfigError: a provider name or price key is malformed, or a config does not validate.
    """
    global _generation
    declared = _providers(providers or {})
    table: dict[str, Price] = {}
    for model_id, raw_price in (prices or {}).items():
        if ":" not in model_id.strip(":"):
            raise ConfigError(f"price key {model_id!r} must be 'provider:model'")
        table[model_id] = _validated(Price, raw_price, f"prices.{model_id}")
    with _lock:
        _declared.clear()
        _declared.update(declared)
        _prices.clear()
        _prices.update(table)
        _generation += 1


def _providers(providers: Mapping[str, ProviderConfig | Mapping[str, object]]) -> dict[str, Provider]:
    declared: dict[str, Provider] = {}
    for name, raw in providers.items():
        if not name or ":" in name or name != name.strip():
            raise ConfigError(f"provider name {name!r} is not valid (no ':' or spaces)")
        config = _validated(ProviderConfig, raw, f"providers.{name}")
        declared[name] = Provider(
            name=name,
            api=config.api,
            base_url=config.base_url.rstrip("/"),
            api_key_env=config.api_key_env or None,
            free=config.free,
        )
    return declared


def declare_job_providers(providers: Mapping[str, ProviderConfig]) -> None:
    """Add the providers a pipeline declares (a seed graph's Ollama hosts) for this process.

    They are looked up after the configured and the built-in ones, so a spec can never redirect
    ``openai`` or a provider of the settings; and they name no key variable (``Pipeline`` refuses
    one), so no key is ever sent to a host a spec chose.
    """
    if not providers:
        return
    declared = _providers(providers)
    if any(p.api_key_env for p in declared.values()):
        raise ConfigError("a provider declared by a job cannot name an api_key_env")
    with _lock:
        _from_jobs.update(declared)


def _validated(cls: type[_M], raw: _M | Mapping[str, object], where: str) -> _M:
    if isinstance(raw, cls):
        return raw
    try:
        return cls.model_validate(raw)
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        raise ConfigError(f"{where}: {exc}") from None


def config_generation() -> int:
    """A number that changes whenever ``configure`` runs (for caches derived from it)."""
    return _generation


def price_overrides() -> dict[str, Price]:
    """The configured price overrides (``provider:model`` -> price), a copy."""
    with _lock:
        return dict(_prices)


def provider(name: str) -> Provider:
    """The provider called ``name``; built-ins read their base URL from the environment now.

    Raises:
        ConfigError: no such provider.
    """
    declared = _declared.get(name)
    if declared is not None:
        return declared
    builtin = _BUILTINS.get(name)
    if builtin is None and name in _from_jobs:
        return _from_jobs[name]
    if builtin is None:
        raise ConfigError(
            f"unknown model provider {name!r}: declare it in FANFLOW_PROVIDERS "
            f"(known: {', '.join(known_providers())})"
        )
    api, url_env, default_url, key_env, free = builtin
    base_url = (os.environ.get(url_env) or default_url).strip().rstrip("/")
    return Provider(name=name, api=api, base_url=base_url, api_key_env=key_env, free=free)


def known_providers() -> list[str]:
    """Names of every provider a model id may use, sorted."""
    return sorted({*_BUILTINS, *_declared, *_from_jobs})


def split_model_id(model_id: str) -> tuple[str, str]:
    """``"openai:gpt-4o-mini"`` -> ``("openai", "gpt-4o-mini")``.

    Raises:
        ConfigError: the id has no ``provider:`` part or no model name.
    """
    name, sep, model = model_id.partition(":")
    if not sep or not name or not model:
        raise ConfigError(f"model {model_id!r} must be 'provider:model', e.g. 'openai:gpt-4o-mini'")
    return name, model
