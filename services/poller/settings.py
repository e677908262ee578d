"""The poller's settings, from the environment."""

from __future__ import annotations

import os
import socket

from pydantic import AliasChoices, Field, field_validator

from services.shared.settings import (
    KeyedServiceSettings,
    metrics_host_setting,
    metrics_port_setting,
)
from services.shared.sync_limits import UserSyncLimit


def _default_owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class PollerSettings(KeyedServiceSettings):
    # Shown as the holder of this replica's leases (each lease has its own token for writing).
    owner: str = Field(
        default_factory=_default_owner, validation_alias=AliasChoices("POSCAL_POLLER_ID")
    )
    # How often the poller looks for connections due for sync.
    tick_seconds: float = Field(
        1.0, gt=0, validation_alias=AliasChoices("POSCAL_POLLER_TICK_SECONDS")
    )
    # Syncs run at once by this replica.
    concurrency: int = Field(4, ge=1, validation_alias=AliasChoices("POSCAL_POLLER_CONCURRENCY"))
    # A lease outlives a stuck replica by at most this; a running sync renews it every third.
    lease_seconds: float = Field(
        120.0, ge=5, validation_alias=AliasChoices("POSCAL_POLLER_LEASE_SECONDS")
    )
    # Consecutive failures after which the connection's status becomes `error`, with an alert.
    failures_before_error: int = Field(
        3, ge=1, validation_alias=AliasChoices("POSCAL_POLLER_FAILURES_BEFORE_ERROR")
    )
    # Failed syncs back off exponentially with jitter from this base up to the cap.
    retry_base_seconds: float = Field(
        30.0, gt=0, validation_alias=AliasChoices("POSCAL_POLLER_RETRY_BASE_SECONDS")
    )
    retry_cap_seconds: float = Field(
        3600.0, gt=0, validation_alias=AliasChoices("POSCAL_POLLER_RETRY_CAP_SECONDS")
    )
    # Per user, across all replicas (`limits` syntax, one limit): a user's many connections
    # cannot hog the poller.
    sync_rate_per_user: str = Field(
        "30/minute", validation_alias=AliasChoices("POSCAL_SYNC_RATE_PER_USER")
    )
    publish_timeout_seconds: float = Field(
        10.0, gt=0, validation_alias=AliasChoices("POSCAL_PUBLISH_TIMEOUT_SECONDS")
    )
    broker_timeout_seconds: float = Field(
        30.0, gt=0, validation_alias=AliasChoices("POSCAL_BROKER_TIMEOUT_SECONDS")
    )
    # How often each connection is reconciled (its broker's history or balance compared with
    # the journal), leased like syncs; 0: never on a schedule (`poscal-sync reconcile` still).
    reconcile_interval_hours: float = Field(
        6.0, ge=0, validation_alias=AliasChoices("POSCAL_RECONCILE_INTERVAL_HOURS")
    )
    # Prometheus metrics on this port (None or 0: not served), bound to this host.
    metrics_port: int | None = metrics_port_setting("POLLER")
    metrics_host: str = metrics_host_setting("POLLER")
    # How often the schedule's and the credentials' gauges are read from Postgres (while the
    # metrics are served).
    gauges_seconds: float = Field(
        30.0, gt=0, validation_alias=AliasChoices("POSCAL_POLLER_GAUGES_SECONDS")
    )

    @field_validator("sync_rate_per_user")
    @classmethod
    def _a_rate_limit(cls, value: str) -> str:
        UserSyncLimit.parse(value)
        return value

    @property
    def user_sync_limit(self) -> UserSyncLimit:
        return UserSyncLimit.parse(self.sync_rate_per_user)
