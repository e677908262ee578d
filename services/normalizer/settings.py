"""The normalizer's settings, from the environment."""

from __future__ import annotations

from pydantic import AliasChoices, Field

from services.shared.settings import ServiceSettings


class NormalizerSettings(ServiceSettings):
    consumer_group: str = Field(
        "poscal-normalizer", validation_alias=AliasChoices("POSCAL_NORMALIZER_GROUP")
    )
    max_batch: int = Field(500, ge=1, validation_alias=AliasChoices("POSCAL_NORMALIZER_MAX_BATCH"))
    max_consecutive_dead_letters: int = Field(
        1000, ge=1, validation_alias=AliasChoices("POSCAL_MAX_CONSECUTIVE_DEAD_LETTERS")
    )
