"""The normalizer's settings, from the environment."""

from __future__ import annotations

from pydantic import AliasChoices, Field

from services.shared.settings import (
    ConsumerSettings,
    metrics_host_setting,
    metrics_port_setting,
)


class NormalizerSettings(ConsumerSettings):
    consumer_group: str = Field(
        "poscal-normalizer", validation_alias=AliasChoices("POSCAL_NORMALIZER_GROUP")
    )
    # Under a backlog a batch this large is mapped, sent and acknowledged with one wait, and its
    # canonical batches reach the writer in batches as large as it takes.
    max_batch: int = Field(2000, ge=1, validation_alias=AliasChoices("POSCAL_NORMALIZER_MAX_BATCH"))
    # Prometheus metrics on this port (None or 0: not served), bound to this host.
    metrics_port: int | None = metrics_port_setting("NORMALIZER")
    metrics_host: str = metrics_host_setting("NORMALIZER")
