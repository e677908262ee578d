"""The writer's settings, from the environment."""

from __future__ import annotations

from pydantic import AliasChoices, Field

from services.shared.settings import ConsumerSettings


class WriterSettings(ConsumerSettings):
    consumer_group: str = Field(
        "poscal-writer", validation_alias=AliasChoices("POSCAL_WRITER_GROUP")
    )
    max_batch: int = Field(500, ge=1, validation_alias=AliasChoices("POSCAL_WRITER_MAX_BATCH"))
