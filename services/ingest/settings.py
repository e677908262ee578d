"""Ingest's settings, from the environment."""

from __future__ import annotations

from limits import parse
from pydantic import AliasChoices, Field, SecretStr, field_validator

from services.ingest.client_ip import parse_networks
from services.shared.settings import ServiceSettings


class IngestSettings(ServiceSettings):
    host: str = Field("127.0.0.1", validation_alias=AliasChoices("POSCAL_INGEST_HOST", "host"))
    port: int = Field(8080, validation_alias=AliasChoices("POSCAL_INGEST_PORT", "port"))
    master_key: SecretStr = Field(validation_alias=AliasChoices("POSCAL_MASTER_KEY", "master_key"))
    # Keys that wrapped data keys before the current one, while `keys rotate` re-wraps them.
    previous_master_keys: SecretStr | None = Field(
        None, validation_alias=AliasChoices("POSCAL_PREVIOUS_MASTER_KEYS", "previous_master_keys")
    )
    signature_tolerance_seconds: int = Field(
        300, ge=1, validation_alias=AliasChoices("POSCAL_SIGNATURE_TOLERANCE_SECONDS")
    )
    max_body_bytes: int = Field(
        256 * 1024, ge=1024, validation_alias=AliasChoices("POSCAL_MAX_BODY_BYTES")
    )
    # How long verified connection keys are kept in memory. Changes reach every replica at once
    # through Postgres notifications; this bounds staleness should a notification be missed.
    connection_cache_seconds: float = Field(
        10.0, ge=0, validation_alias=AliasChoices("POSCAL_CONNECTION_CACHE_SECONDS")
    )
    publish_timeout_seconds: float = Field(
        10.0, gt=0, validation_alias=AliasChoices("POSCAL_PUBLISH_TIMEOUT_SECONDS")
    )
    # Per ingest replica (in memory): with N replicas behind a balancer a sender gets up to N
    # times this. `limits` syntax: "120/minute", "10/second;600/hour".
    rate_limit_per_connection: str = Field(
        "120/minute", validation_alias=AliasChoices("POSCAL_RATE_LIMIT_PER_CONNECTION")
    )
    rate_limit_per_user: str = Field(
        "600/minute", validation_alias=AliasChoices("POSCAL_RATE_LIMIT_PER_USER")
    )
    # Consecutive failed verifications after which a connection is locked until its secret is
    # rotated.
    lockout_threshold: int = Field(
        10, ge=1, validation_alias=AliasChoices("POSCAL_LOCKOUT_THRESHOLD")
    )
    # Proxies whose X-Forwarded-For is believed (comma-separated addresses or CIDR networks).
    trusted_proxies: str = Field("", validation_alias=AliasChoices("POSCAL_TRUSTED_PROXIES"))
    # How long accepted webhook ids are remembered for replay refusal, and attempts kept.
    replay_window_days: int = Field(
        7, ge=1, validation_alias=AliasChoices("POSCAL_REPLAY_WINDOW_DAYS")
    )
    attempt_retention_days: int = Field(
        90, ge=1, validation_alias=AliasChoices("POSCAL_ATTEMPT_RETENTION_DAYS")
    )

    @field_validator("rate_limit_per_connection", "rate_limit_per_user")
    @classmethod
    def _a_rate_limit(cls, value: str) -> str:
        parse(value)  # raises ValueError with the offending text
        return value

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, value: str) -> str:
        parse_networks(value)
        return value
