"""The writer's settings, from the environment."""

from __future__ import annotations

from pydantic import AliasChoices, Field

from services.shared.settings import (
    ConsumerSettings,
    metrics_host_setting,
    metrics_port_setting,
)


class WriterSettings(ConsumerSettings):
    consumer_group: str = Field(
        "poscal-writer", validation_alias=AliasChoices("POSCAL_WRITER_GROUP")
    )
    # Under a backlog a batch this large amortises the per-transaction statements and commit.
    max_batch: int = Field(2000, ge=1, validation_alias=AliasChoices("POSCAL_WRITER_MAX_BATCH"))
    # Prometheus metrics on this port (None or 0: not served), bound to this host.
    metrics_port: int | None = metrics_port_setting("WRITER")
    metrics_host: str = metrics_host_setting("WRITER")
