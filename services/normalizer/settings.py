"""The normalizer's settings, from the environment."""

from __future__ import annotations

from pydantic import AliasChoices, Field

from services.shared.settings import ConsumerSettings


class NormalizerSettings(ConsumerSettings):
    consumer_group: str = Field(
        "poscal-normalizer", validation_alias=AliasChoices("POSCAL_NORMALIZER_GROUP")
    )
    max_batch: int = Field(500, ge=1, validation_alias=AliasChoices("POSCAL_NORMALIZER_MAX_BATCH"))
