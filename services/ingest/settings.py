"""Ingest's settings, from the environment."""

from __future__ import annotations

from pydantic import AliasChoices, Field, SecretStr

from services.shared.settings import ServiceSettings


class IngestSettings(ServiceSettings):
    host: str = Field("127.0.0.1", validation_alias=AliasChoices("POSCAL_INGEST_HOST", "host"))
    port: int = Field(8080, validation_alias=AliasChoices("POSCAL_INGEST_PORT", "port"))
    master_key: SecretStr = Field(validation_alias=AliasChoices("POSCAL_MASTER_KEY", "master_key"))
    signature_tolerance_seconds: int = Field(
        300, ge=1, validation_alias=AliasChoices("POSCAL_SIGNATURE_TOLERANCE_SECONDS")
    )
    max_body_bytes: int = Field(
        256 * 1024, ge=1024, validation_alias=AliasChoices("POSCAL_MAX_BODY_BYTES")
    )
    # How long verified connection keys are kept in memory before being read again.
    connection_cache_seconds: float = Field(
        10.0, ge=0, validation_alias=AliasChoices("POSCAL_CONNECTION_CACHE_SECONDS")
    )
    publish_timeout_seconds: float = Field(
        10.0, gt=0, validation_alias=AliasChoices("POSCAL_PUBLISH_TIMEOUT_SECONDS")
    )
