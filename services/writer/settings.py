"""The writer's settings, from the environment."""

from __future__ import annotations

from pydantic import AliasChoices, Field

from services.shared.settings import ServiceSettings


class WriterSettings(ServiceSettings):
    consumer_group: str = Field(
        "poscal-writer", validation_alias=AliasChoices("POSCAL_WRITER_GROUP")
    )
    max_batch: int = Field(500, ge=1, validation_alias=AliasChoices("POSCAL_WRITER_MAX_BATCH"))
    max_consecutive_dead_letters: int = Field(
        1000, ge=1, validation_alias=AliasChoices("POSCAL_MAX_CONSECUTIVE_DEAD_LETTERS")
    )
