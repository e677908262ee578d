"""A stand-in for a cloud KMS behind POSCAL_KEK_PROVIDER: wrapping and unwrapping happen
"elsewhere" (here, under a fixed key), and the key is named like a KMS key."""

from __future__ import annotations

from services.shared.crypto import LocalKeyEncryptionKey

_KMS_KEY = bytes(range(100, 132))


class FakeKms:
    def __init__(self) -> None:
        self._inside_the_kms = LocalKeyEncryptionKey(_KMS_KEY)

    @property
    def key_id(self) -> str:
        return "kms:projects/poscal/keys/webhook-vault/1"

    def wrap(self, data_key: bytes, aad: bytes) -> bytes:
        return self._inside_the_kms.wrap(data_key, aad)

    def unwrap(self, wrapped: bytes, aad: bytes) -> bytes:
        return self._inside_the_kms.unwrap(wrapped, aad)


def create() -> FakeKms:
    return FakeKms()
