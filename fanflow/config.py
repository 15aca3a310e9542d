"""Settings, read once at the edges (CLI, worker entry, ``Client.from_env``) and passed down.

Every setting is an environment variable with the ``FANFLOW_`` prefix (``FANFLOW_BROKER_URL``).
"""

from __future__ import annotations

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from fanflow.errors import ConfigError
from fanflow.executors.llm.providers import Price, ProviderConfig

__all__ = ["Settings"]


class Settings(BaseSettings):
    """fanflow's configuration.

    Without ``broker_url`` the CLI starts an embedded Redis (see ``fanflow.embedded``). The job
    store needs Redis: it uses ``store_url``, else ``result_backend``, else ``broker_url``.
    """

    model_config = SettingsConfigDict(env_prefix="FANFLOW_", extra="forbid", frozen=True)

    broker_url: SecretStr | None = Field(
        None, description="redis://… (or amqp://… with a Redis result backend)"
    )
    result_backend: SecretStr | None = Field(None, description="redis://…; defaults to broker_url")
    store_url: SecretStr | None = Field(
        None, description="Redis for the job store; defaults to result_backend"
    )
    key_prefix: str = Field("fanflow", pattern=r"^[A-Za-z0-9_.\-]+$")
    visibility_timeout_s: int = Field(3600, ge=10, description="must exceed every branch timeout")
    result_ttl_s: int = Field(7 * 24 * 3600, ge=60, description="how long job results stay readable")
    delivery_cap: int = Field(5, ge=1, description="deliveries of one branch before it is failed")
    prefetch_multiplier: int = Field(1, ge=1)
    batch_size: int = Field(
        25, ge=0, description="a fan-out of 100 or more model calls goes in messages of this many branches "
        "(each still its own task in the job store and in Flower); 0: one message per branch",
    )  # fmt: skip
    task_events: bool = Field(True, description="send task events so Flower sees every task")
    soft_shutdown_timeout_s: float = Field(30.0, ge=0)
    outage_grace_s: float = Field(
        10.0, ge=0, description="how long producers and the CLI retry through a Redis outage before "
        "they fail with a BackendError",
    )  # fmt: skip
    lease_s: float = Field(
        30.0, ge=3, description="a running branch's lease, renewed by its worker every lease_s/6 seconds; "
        "a dead worker's branches are delivered again once it lapses",
    )  # fmt: skip
    sweep_interval_s: float = Field(5.0, gt=0, description="how often a worker sweeps for lapsed leases")
    redelivery_grace_s: float = Field(
        15.0, gt=0, description="how long a stalled job's unstarted branch waits before its message is "
        "looked for in the broker (and sent again if it was lost)",
    )  # fmt: skip
    limit_wait_in_slot_s: float = Field(
        2.0, ge=0, description="a branch its limits refuse waits this long in its thread; longer, it is "
        "sent again with a countdown (thread freed)",
    )  # fmt: skip
    providers: dict[str, ProviderConfig] = Field(
        default_factory=dict, description="model providers besides openai, anthropic and ollama, as JSON: "
        '{"vllm": {"api": "openai", "base_url": "http://host:8000/v1", "api_key_env": "VLLM_API_KEY"}}',
    )  # fmt: skip
    prices: dict[str, Price] = Field(
        default_factory=dict, description="USD per million tokens, overriding the built-in table, as JSON: "
        '{"openai:gpt-4o": {"input": 2.5, "output": 10, "cached_input": 1.25}}',
    )  # fmt: skip
    store_max_connections: int | None = Field(
        None, ge=2, description="job-store connections per process (default: the worker's concurrency + 8)"
    )

    @model_validator(mode="after")
    def _store_must_be_redis(self) -> Settings:
        url = self.store_url_value
        if url is not None and not url.startswith(("redis://", "rediss://", "unix://", "redis+socket://")):
            raise ConfigError(
                "the job store needs Redis: set FANFLOW_STORE_URL or FANFLOW_RESULT_BACKEND to a redis:// URL"
            )
        return self

    @property
    def configured(self) -> bool:
        """True when a broker is configured (otherwise the CLI runs on an embedded Redis)."""
        return self.broker_url is not None

    @property
    def broker_url_value(self) -> str | None:
        """The broker URL in clear (never log it: it may hold a password)."""
        return self.broker_url.get_secret_value() if self.broker_url else None

    @property
    def result_backend_value(self) -> str | None:
        """The result backend URL in clear; defaults to the broker URL."""
        if self.result_backend is not None:
            return self.result_backend.get_secret_value()
        return self.broker_url_value

    @property
    def store_url_value(self) -> str | None:
        """The job store URL in clear; defaults to the result backend."""
        if self.store_url is not None:
            return self.store_url.get_secret_value()
        return self.result_backend_value

    def with_redis(self, url: str) -> Settings:
        """A copy pointing broker, result backend and store at one Redis URL."""
        return self.model_copy(
            update={
                "broker_url": SecretStr(url),
                "result_backend": SecretStr(url),
                "store_url": SecretStr(url),
            }
        )
