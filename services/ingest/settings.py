"""Ingest's settings, from the environment."""

from __future__ import annotations

from limits import parse
from pydantic import AliasChoices, Field, field_validator, model_validator

from services.shared.client_ip import parse_networks
from services.shared.settings import KeyedServiceSettings


class IngestSettings(KeyedServiceSettings):
    host: str = Field("127.0.0.1", validation_alias=AliasChoices("POSCAL_INGEST_HOST", "host"))
    port: int = Field(8080, validation_alias=AliasChoices("POSCAL_INGEST_PORT", "port"))
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
    # How long a webhook-id claim waits for its publisher before another request may take it
    # over (its replica died mid-publish); until then a retry is told 503 with the time left.
    # Default: twice the publish timeout plus 10 s, so a publish still running is not doubled.
    claim_lease_seconds: float | None = Field(
        None, gt=0, validation_alias=AliasChoices("POSCAL_CLAIM_LEASE_SECONDS")
    )
    # Per ingest replica (in memory): with N replicas behind a balancer a sender gets up to N
    # times this. `limits` syntax: "120/minute", "10/second;600/hour".
    rate_limit_per_connection: str = Field(
        "120/minute", validation_alias=AliasChoices("POSCAL_RATE_LIMIT_PER_CONNECTION")
    )
    rate_limit_per_user: str = Field(
        "600/minute", validation_alias=AliasChoices("POSCAL_RATE_LIMIT_PER_USER")
    )
    # Refusals (any status but our own 503s) a client address (an IPv6 /64) may cause, and a
    # sender on one connection from that address, before their refusals are folded into one
    # record per window and the address's malformed or unknown URLs get 429 at once: what
    # keeps floods of forged or misdirected requests cheap and the attempt log bounded,
    # without ever refusing a delivery that verifies (client_refusals.py).
    refusals_per_client: str = Field(
        "120/minute", validation_alias=AliasChoices("POSCAL_REFUSALS_PER_CLIENT")
    )
    # Failed verifications of one connection from one source: answered 401 up to
    # `failures_before_throttle`, then 429 for 1 s, 2 s, 4 s... up to the cap; the source's
    # `failure_alert_threshold`-th (or the connection's, from all sources together, at each
    # multiple of it) raises an alert and marks the credentials for rotation. Ingest never locks
    # a connection, only an operator does (POSCAL_LOCKOUT_THRESHOLD is the alert threshold's old
    # name).
    failures_before_throttle: int = Field(
        3, ge=0, validation_alias=AliasChoices("POSCAL_FAILURES_BEFORE_THROTTLE")
    )
    failure_throttle_cap_seconds: int = Field(
        900, ge=1, validation_alias=AliasChoices("POSCAL_FAILURE_THROTTLE_CAP_SECONDS")
    )
    failure_alert_threshold: int = Field(
        10,
        ge=1,
        validation_alias=AliasChoices("POSCAL_FAILURE_ALERT_THRESHOLD", "POSCAL_LOCKOUT_THRESHOLD"),
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
    # Slow clients (request_bounds.py): the whole body within this long of its headers (408
    # and the connection closed otherwise), an idle keep-alive connection closed after this
    # long, and at most this many requests answered at once (503 beyond). Header reads are
    # bounded by the proxy in front (infra/nginx/).
    body_timeout_seconds: float = Field(
        15.0, gt=0, validation_alias=AliasChoices("POSCAL_BODY_TIMEOUT_SECONDS")
    )
    keepalive_timeout_seconds: int = Field(
        5, ge=1, validation_alias=AliasChoices("POSCAL_KEEPALIVE_TIMEOUT_SECONDS")
    )
    max_concurrent_requests: int = Field(
        256, ge=1, validation_alias=AliasChoices("POSCAL_MAX_CONCURRENT_REQUESTS")
    )
    # How often queued attempt records are written, and how often each replica looks for
    # instances that died without writing theirs (instances.py).
    audit_flush_seconds: float = Field(
        0.2, gt=0, validation_alias=AliasChoices("POSCAL_AUDIT_FLUSH_SECONDS")
    )
    instance_check_seconds: float = Field(
        30.0, gt=0, validation_alias=AliasChoices("POSCAL_INSTANCE_CHECK_SECONDS")
    )

    @field_validator("rate_limit_per_connection", "rate_limit_per_user", "refusals_per_client")
    @classmethod
    def _a_rate_limit(cls, value: str) -> str:
        parse(value)  # raises ValueError with the offending text
        return value

    @property
    def claim_lease(self) -> float:
        if self.claim_lease_seconds is not None:
            return self.claim_lease_seconds
        return 2 * self.publish_timeout_seconds + 10

    @model_validator(mode="after")
    def _claims_outlive_a_publish(self) -> IngestSettings:
        # A lease shorter than a publish would let a retry take over a claim whose event is
        # still on its way, publishing it twice for nothing.
        if self.claim_lease <= self.publish_timeout_seconds:
            raise ValueError(
                "POSCAL_CLAIM_LEASE_SECONDS must be longer than POSCAL_PUBLISH_TIMEOUT_SECONDS"
            )
        return self

    @model_validator(mode="after")
    def _replays_outlive_the_tolerance(self) -> IngestSettings:
        # A webhook id forgotten while its signature is still within the tolerance could be
        # replayed: the window must be longer.
        if self.signature_tolerance_seconds >= self.replay_window_days * 86400:
            raise ValueError(
                "POSCAL_SIGNATURE_TOLERANCE_SECONDS must be shorter than POSCAL_REPLAY_WINDOW_DAYS"
            )
        return self

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, value: str) -> str:
        parse_networks(value)
        return value
