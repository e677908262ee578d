"""Settings for the operator commands (connections, keys, migrate), from the environment."""

from __future__ import annotations

from pydantic import AliasChoices, Field

from services.shared.keyring import KeyRing
from services.shared.settings import KeyedServiceSettings


class MasterKeyMissing(Exception):
    """The command needs the master key (and, mid-rotation, the previous ones)."""


class CliSettings(KeyedServiceSettings):
    ingest_url: str = Field(
        "http://127.0.0.1:8080",
        validation_alias=AliasChoices("POSCAL_INGEST_PUBLIC_URL", "INGEST_URL", "ingest_url"),
    )

    def key_ring(self) -> KeyRing:
        """Raises MasterKeyMissing, or ValueError for a key that does not load (never quoted)."""
        if self.master_key is None and not self.kek_provider:
            raise MasterKeyMissing("POSCAL_MASTER_KEY is not set (base64 of 32 bytes)")
        return super().key_ring()
