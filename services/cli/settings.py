"""Settings for the operator commands (connections, migrate), from the environment."""

from __future__ import annotations

from pydantic import AliasChoices, Field, SecretStr

from services.shared.settings import ServiceSettings


class CliSettings(ServiceSettings):
    master_key: SecretStr | None = Field(
        None, validation_alias=AliasChoices("POSCAL_MASTER_KEY", "master_key")
    )
    ingest_url: str = Field(
        "http://127.0.0.1:8080",
        validation_alias=AliasChoices("POSCAL_INGEST_PUBLIC_URL", "INGEST_URL", "ingest_url"),
    )
