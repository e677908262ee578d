"""Settings every service shares, read once from the environment at start-up."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

if TYPE_CHECKING:
    from services.shared.keyring import KeyRing


class Topics(BaseSettings):
    """Topic names; versioned so a contract change can run beside the old one."""

    model_config = SettingsConfigDict(env_prefix="POSCAL_TOPIC_", frozen=True)

    raw: str = "poscal.raw.v1"
    canonical: str = "poscal.canonical.v1"
    dead_letter: str = "poscal.deadletter.v1"


def metrics_port_setting(service: str) -> Any:
    """`POSCAL_{SERVICE}_METRICS_PORT`: where the service serves its Prometheus metrics (None or
    0: not served)."""
    return Field(
        None, ge=0, le=65535, validation_alias=AliasChoices(f"POSCAL_{service}_METRICS_PORT")
    )


def metrics_host_setting(service: str) -> Any:
    """`POSCAL_{SERVICE}_METRICS_HOST`: the address the metrics port is bound to."""
    return Field("127.0.0.1", validation_alias=AliasChoices(f"POSCAL_{service}_METRICS_HOST"))


class ServiceSettings(BaseSettings):
    """The base of each service's settings class."""

    model_config = SettingsConfigDict(frozen=True, extra="ignore", populate_by_name=True)

    database_url: SecretStr = Field(
        SecretStr("postgresql://postgres@127.0.0.1:5432/poscal"),
        validation_alias=AliasChoices("DATABASE_URL", "database_url"),
    )
    kafka_bootstrap_servers: str = Field(
        "127.0.0.1:9092",
        validation_alias=AliasChoices("KAFKA_BOOTSTRAP_SERVERS", "kafka_bootstrap_servers"),
    )
    topics: Topics = Field(default_factory=Topics)
    log_level: str = Field("INFO", validation_alias=AliasChoices("POSCAL_LOG_LEVEL", "log_level"))
    log_format: Literal["json", "console"] = Field(
        "json", validation_alias=AliasChoices("POSCAL_LOG_FORMAT", "log_format")
    )
    kafka_session_timeout_ms: int = Field(
        10000, ge=1000, validation_alias=AliasChoices("POSCAL_KAFKA_SESSION_TIMEOUT_MS")
    )
    # Kafka answers a fetch as soon as data arrives, so this is only how often an idle consumer
    # polls: longer costs no latency under load, shorter burns CPU while idle. (The embedded
    # broker now and then answers only at the end of the wait: the dev stack sets 100 ms.)
    kafka_fetch_max_wait_ms: int = Field(
        500, ge=1, validation_alias=AliasChoices("POSCAL_KAFKA_FETCH_MAX_WAIT_MS")
    )
    # Touched once the service is ready (consumers: joined their group), for supervisors.
    ready_file: Path | None = Field(None, validation_alias=AliasChoices("POSCAL_READY_FILE"))
    # Started while Postgres or Kafka is away, a service waits for it, retrying with jittered
    # exponential backoff up to this long between attempts.
    connect_retry_cap_seconds: float = Field(
        10.0, gt=0, validation_alias=AliasChoices("POSCAL_CONNECT_RETRY_CAP_SECONDS")
    )
    # After SIGTERM, how long a service may take to finish its batch and close its connections
    # before it is cancelled (its records are delivered again: see lifecycle.run_until_signalled).
    shutdown_grace_seconds: float = Field(
        10.0, gt=0, validation_alias=AliasChoices("POSCAL_SHUTDOWN_GRACE_SECONDS")
    )
    # Spans also go to this JSON-lines file when set (the dev stack sets it; `poscal-sync traces`
    # reads it). OTLP export is configured by the SDK's own OTEL_* variables.
    trace_file: Path | None = Field(
        None, validation_alias=AliasChoices("POSCAL_TRACE_FILE", "trace_file")
    )


class ConsumerSettings(ServiceSettings):
    """A service that consumes a topic: how it tells a record's failure from an outage."""

    # How long a batch that keeps failing transiently while the infrastructure answers is
    # retried before its failing record is dead-lettered (both must be spent).
    retry_budget_attempts: int = Field(
        20, ge=1, validation_alias=AliasChoices("POSCAL_RETRY_BUDGET_ATTEMPTS")
    )
    retry_budget_seconds: float = Field(
        300.0, ge=0, validation_alias=AliasChoices("POSCAL_RETRY_BUDGET_SECONDS")
    )
    # Dead letters in a row that stop the consumer uncommitted (a bad deploy), counted only once
    # they come from at least this many sources (connections): one tenant's garbage, however
    # much, stops no one.
    max_consecutive_dead_letters: int = Field(
        1000, ge=1, validation_alias=AliasChoices("POSCAL_MAX_CONSECUTIVE_DEAD_LETTERS")
    )
    dead_letter_budget_sources: int = Field(
        10, ge=1, validation_alias=AliasChoices("POSCAL_DEAD_LETTER_BUDGET_SOURCES")
    )


class KeyedServiceSettings(ServiceSettings):
    """A service that opens credentials: where its key-encryption key comes from."""

    master_key: SecretStr | None = Field(
        None, validation_alias=AliasChoices("POSCAL_MASTER_KEY", "master_key")
    )
    # Comma-separated base64 keys that still unwrap data keys during a master key rotation.
    previous_master_keys: SecretStr | None = Field(
        None,
        validation_alias=AliasChoices("POSCAL_PREVIOUS_MASTER_KEYS", "previous_master_keys"),
    )
    # A KMS instead of a key in the environment: `package.module:factory`.
    kek_provider: str | None = Field(
        None, validation_alias=AliasChoices("POSCAL_KEK_PROVIDER", "kek_provider")
    )

    def key_ring(self) -> KeyRing:
        """Raises ValueError (never quoting a key) when no key is configured or one does not
        load."""
        from services.shared.keyring import load_key_ring

        return load_key_ring(
            self.master_key.get_secret_value() if self.master_key else None,
            self.previous_master_keys.get_secret_value() if self.previous_master_keys else None,
            self.kek_provider,
        )
