"""The writer's settings, from the environment."""

from __future__ import annotations

from pydantic import AliasChoices, Field

from services.shared.settings import ConsumerSettings


class WriterSettings(ConsumerSettings):
    consumer_group: str = Field(
        "poscal-writer", validation_alias=AliasChoices("POSCAL_WRITER_GROUP")
    )
    # Under a backlog a batch this large amortises the per-transaction statements and commit.
    max_batch: int = Field(2000, ge=1, validation_alias=AliasChoices("POSCAL_WRITER_MAX_BATCH"))
