"""Configuration, read from the environment with the ``WALLET_`` prefix."""

from functools import lru_cache
from pathlib import Path

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Every knob of the service. Limits carry their unit in the name."""

    model_config = SettingsConfigDict(env_prefix="WALLET_", extra="ignore")

    database_url: str | None = Field(
        default=None, description="PostgreSQL URL; when unset an embedded server runs in data_dir."
    )
    data_dir: Path = Field(default=Path(".wallet-data"), description="Where the embedded PostgreSQL lives.")
    bootstrap_key: SecretStr | None = Field(
        default=None, description="Secret of an admin key that the service ensures at start."
    )
    pool_size_max: int = Field(default=16, ge=1, le=500)
    log_level: str = Field(default="INFO", pattern="^(DEBUG|INFO|WARNING|ERROR|CRITICAL)$")
    statement_timeout_ms: int = Field(default=5_000, ge=100, le=600_000)
    lock_timeout_ms: int = Field(default=2_000, ge=10, le=600_000)
    connect_timeout_ms: int = Field(default=1_000, ge=100, le=60_000)
    pool_acquire_timeout_ms: int = Field(default=2_000, ge=10, le=60_000)
    idempotency_retention_days: int = Field(default=30, ge=1, le=3_650)
    api_key_cache_ttl_ms: int = Field(default=1_000, ge=0, le=60_000)
    body_size_max_bytes: int = Field(default=65_536, ge=1_024, le=10_485_760)
    batch_body_size_max_bytes: int = Field(default=2_097_152, ge=1_024, le=67_108_864)
    retry_attempts_max: int = Field(default=5, ge=1, le=20)
    reconnect_window_ms: int = Field(
        default=5_000, ge=0, le=60_000, description="How long a request keeps trying after its connection broke."
    )
    rate_limit_per_s: int = Field(
        default=5_000,
        ge=0,
        le=1_000_000,
        description="Requests per second per API key unless the key sets its own; 0 = off.",
    )
    redis_url: str | None = Field(default=None, description="Shares rate limits across workers and servers.")
    hold_expiry_interval_ms: int = Field(
        default=1_000,
        ge=10,
        le=3_600_000,
        description="How often each worker marks holds past their expiry (they stop counting at once regardless)"
        " and moves what is left of expired lots of credits to system:expired.",
    )
    statistics_rollup_interval_ms: int = Field(
        default=1_000,
        ge=10,
        le=3_600_000,
        description="How often a worker rolls new entries up for statistics (they are exact without it, only slower).",
    )
    webhook_timeout_ms: int = Field(
        default=10_000, ge=100, le=60_000, description="How long a webhook receiver has to answer a delivery."
    )
    webhook_allowed_hosts: str | None = Field(
        default=None,
        description="Comma-separated host names (shell patterns, `*.example.com`) that webhook URLs may name; unset:"
        " any host.",
    )
    webhook_dispatch: bool = Field(default=True, description="Whether `wallet serve` workers deliver webhooks.")
    nats_url: str | None = Field(default=None, description="A NATS server whose JetStream the events go to as well.")
    transaction_pooler: bool = Field(
        default=False,
        description="WALLET_DATABASE_URL is a pooler in transaction mode (PgBouncer): no prepared statement outlives a"
        " transaction and no setting is sent at connect (set statement_timeout, lock_timeout,"
        " idle_in_transaction_session_timeout and jit on the database's role); the NATS sink cannot run behind it.",
    )
    metrics: bool = Field(
        default=True, description="Whether GET /metrics answers (Prometheus text format, no key); off: a 404."
    )
    group_commit_items_max: int = Field(
        default=64, ge=1, le=1000, description="Requests of a worker that may share one transaction; 1 = off."
    )
    group_commit_groups_max: int = Field(
        default=4, ge=1, le=100, description="Groups of a worker on their way to the database at once."
    )

    @model_validator(mode="after")
    def _sink_needs_sessions(self) -> "Settings":
        if self.transaction_pooler and self.nats_url:
            # The sink's publisher holds a session advisory lock: a transaction pooler gives no session to hold it.
            raise ValueError("WALLET_NATS_URL cannot be used with WALLET_TRANSACTION_POOLER")
        return self


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
