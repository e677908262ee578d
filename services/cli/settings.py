"""Settings for the operator commands (connections, keys, migrate), from the environment."""

from __future__ import annotations

from pydantic import AliasChoices, Field, SecretStr

from services.shared.keyring import KeyRing, load_key_ring
from services.shared.settings import ServiceSettings


class MasterKeyMissing(Exception):
    """The command needs the master key (and, mid-rotation, the previous ones)."""


class CliSettings(ServiceSettings):
    master_key: SecretStr | None = Field(
        None, validation_alias=AliasChoices("POSCAL_MASTER_KEY", "master_key")
    )
    # Comma-separated base64 keys that still unwrap data keys during a master key rotation.
    previous_master_keys: SecretStr | None = Field(
        None,
        validation_alias=AliasChoices("POSCAL_PREVIOUS_MASTER_KEYS", "previous_master_keys"),
    )
    ingest_url: str = Field(
        "http://127.0.0.1:8080",
        validation_alias=AliasChoices("POSCAL_INGEST_PUBLIC_URL", "INGEST_URL", "ingest_url"),
    )

    def key_ring(self) -> KeyRing:
        """Raises MasterKeyMissing, or ValueError for a key that does not load (never quoted)."""
        if self.master_key is None:
            raise MasterKeyMissing("POSCAL_MASTER_KEY is not set (base64 of 32 bytes)")
        previous = self.previous_master_keys
        return load_key_ring(
            self.master_key.get_secret_value(),
            previous.get_secret_value() if previous is not None else None,
        )
