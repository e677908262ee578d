"""Envelope encryption fails closed on any tampering, wrong key or wrong context."""

from __future__ import annotations

import base64
import uuid

import pytest

from services.shared.crypto import (
    DecryptionFailed,
    LocalKeyEncryptionKey,
    credential_aad,
    generate_key,
    new_master_key_base64,
    seal,
    unseal,
)

AAD = credential_aad(uuid.uuid4(), "webhook_secret", 1)


def test_sealed_data_opens_with_the_same_key_and_context() -> None:
    key = generate_key()
    assert unseal(key, seal(key, b"secret", AAD), AAD) == b"secret"


def test_every_seal_uses_a_fresh_nonce() -> None:
    key = generate_key()
    assert seal(key, b"secret", AAD) != seal(key, b"secret", AAD)


@pytest.mark.parametrize("position", [0, 12, -1])
def test_a_flipped_bit_anywhere_fails_closed(position: int) -> None:
    key = generate_key()
    sealed = bytearray(seal(key, b"secret", AAD))
    sealed[position] ^= 0x01
    with pytest.raises(DecryptionFailed):
        unseal(key, bytes(sealed), AAD)


def test_a_wrong_key_or_another_rows_context_fails_closed() -> None:
    key = generate_key()
    sealed = seal(key, b"secret", AAD)
    with pytest.raises(DecryptionFailed):
        unseal(generate_key(), sealed, AAD)
    with pytest.raises(DecryptionFailed):
        unseal(key, sealed, credential_aad(uuid.uuid4(), "webhook_secret", 1))
    with pytest.raises(DecryptionFailed):
        unseal(key, b"short", AAD)


def test_the_master_key_must_be_32_bytes_of_base64() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        LocalKeyEncryptionKey.from_base64(base64.b64encode(b"x" * 16).decode())
    with pytest.raises(ValueError, match="base64"):
        LocalKeyEncryptionKey.from_base64("not base64!")


def test_the_master_key_never_shows_in_its_id_or_repr() -> None:
    encoded = new_master_key_base64()
    kek = LocalKeyEncryptionKey.from_base64(encoded)
    raw = base64.b64decode(encoded)
    for text in (kek.key_id, repr(kek), str(kek)):
        assert encoded not in text and raw.hex() not in text


def test_a_wrapped_data_key_unwraps_only_under_its_own_context() -> None:
    kek = LocalKeyEncryptionKey.from_base64(new_master_key_base64())
    data_key = generate_key()
    wrapped = kek.wrap(data_key, b"user-a")
    assert kek.unwrap(wrapped, b"user-a") == data_key
    with pytest.raises(DecryptionFailed):
        kek.unwrap(wrapped, b"user-b")
