"""Envelope encryption opens only with the same key and context, and fails closed otherwise."""

from __future__ import annotations

import base64
import uuid
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.shared.crypto import (
    KEY_BYTES,
    NONCE_BYTES,
    DecryptionFailed,
    LocalKeyEncryptionKey,
    credential_aad,
    data_key_aad,
    generate_key,
    new_master_key_base64,
    seal,
    unseal,
)

CONNECTION_ID = uuid.UUID("0b6f3c52-5d0e-4f57-9a7e-3f1b1c2d4e5f")
AAD = credential_aad(CONNECTION_ID, "webhook_secret", 1)
KEY = bytes(range(32))
PLAINTEXT = b"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def test_sealed_data_opens_with_the_same_key_and_context() -> None:
    assert unseal(KEY, seal(KEY, PLAINTEXT, AAD), AAD) == PLAINTEXT


@settings(max_examples=200, deadline=None)
@given(plaintext=st.binary(max_size=4096), aad=st.binary(max_size=256))
def test_any_plaintext_under_any_context_round_trips(plaintext: bytes, aad: bytes) -> None:
    assert unseal(KEY, seal(KEY, plaintext, aad), aad) == plaintext


def test_a_sealed_value_is_a_nonce_then_ciphertext_and_tag() -> None:
    sealed = seal(KEY, PLAINTEXT, AAD)
    assert len(sealed) == NONCE_BYTES + len(PLAINTEXT) + 16
    assert PLAINTEXT not in sealed


def test_sealing_the_same_plaintext_twice_uses_a_fresh_nonce_each_time() -> None:
    first, second = seal(KEY, PLAINTEXT, AAD), seal(KEY, PLAINTEXT, AAD)
    assert first[:NONCE_BYTES] != second[:NONCE_BYTES]
    assert first != second
    assert unseal(KEY, first, AAD) == unseal(KEY, second, AAD) == PLAINTEXT


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_a_change_to_any_byte_of_the_sealed_value_fails_closed(data: st.DataObject) -> None:
    sealed = bytearray(seal(KEY, PLAINTEXT, AAD))
    index = data.draw(st.integers(min_value=0, max_value=len(sealed) - 1), label="index")
    sealed[index] ^= data.draw(st.integers(min_value=1, max_value=255), label="flip")
    with pytest.raises(DecryptionFailed):
        unseal(KEY, bytes(sealed), AAD)


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda s: s[:-1], id="tag truncated"),
        pytest.param(lambda s: s + b"\x00", id="byte appended"),
        pytest.param(lambda s: s[:NONCE_BYTES], id="nonce only"),
        pytest.param(lambda s: b"", id="empty"),
        pytest.param(lambda s: s[NONCE_BYTES:] + s[:NONCE_BYTES], id="nonce moved"),
    ],
)
def test_a_truncated_extended_or_rearranged_sealed_value_fails_closed(
    damage: Callable[[bytes], bytes],
) -> None:
    with pytest.raises(DecryptionFailed):
        unseal(KEY, damage(seal(KEY, PLAINTEXT, AAD)), AAD)


def test_another_key_fails_closed() -> None:
    sealed = seal(KEY, PLAINTEXT, AAD)
    with pytest.raises(DecryptionFailed):
        unseal(generate_key(), sealed, AAD)


@pytest.mark.parametrize(
    "other_context",
    [
        pytest.param(credential_aad(uuid.uuid4(), "webhook_secret", 1), id="another connection"),
        pytest.param(credential_aad(CONNECTION_ID, "api_token", 1), id="another kind"),
        pytest.param(credential_aad(CONNECTION_ID, "webhook_secret", 2), id="another data key"),
        pytest.param(data_key_aad(CONNECTION_ID, 1), id="a data key's context"),
        pytest.param(b"", id="no context"),
    ],
)
def test_another_rows_context_fails_closed(other_context: bytes) -> None:
    sealed = seal(KEY, PLAINTEXT, AAD)
    with pytest.raises(DecryptionFailed):
        unseal(KEY, sealed, other_context)


def test_generated_keys_are_32_random_bytes() -> None:
    assert len(generate_key()) == KEY_BYTES
    assert generate_key() != generate_key()


# --- the local key-encryption key ----------------------------------------------------------


@pytest.mark.parametrize("length", [0, 16, 24, 31, 33, 64])
def test_a_master_key_that_is_not_32_bytes_is_refused(length: int) -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        LocalKeyEncryptionKey(b"k" * length)
    with pytest.raises(ValueError, match="32 bytes"):
        LocalKeyEncryptionKey.from_base64(base64.b64encode(b"k" * length).decode())


@pytest.mark.parametrize(
    "encoded",
    [
        "not base64!",
        "a" * 43,  # 32 bytes' worth of characters without the padding
        base64.urlsafe_b64encode(b"\xfb" * 32).decode(),  # URL-safe alphabet
        "ä" * 44,
    ],
)
def test_a_master_key_that_is_not_standard_base64_is_refused(encoded: str) -> None:
    with pytest.raises(ValueError, match="not valid base64"):
        LocalKeyEncryptionKey.from_base64(encoded)


def test_a_master_key_with_surrounding_whitespace_is_accepted() -> None:
    encoded = new_master_key_base64()
    assert (
        LocalKeyEncryptionKey.from_base64(f"  {encoded}\n").key_id
        == LocalKeyEncryptionKey.from_base64(encoded).key_id
    )


def test_the_master_key_never_shows_in_its_id_or_repr() -> None:
    encoded = new_master_key_base64()
    raw = base64.b64decode(encoded)
    kek = LocalKeyEncryptionKey.from_base64(encoded)
    for text in (kek.key_id, repr(kek), str(kek), f"{kek!r}"):
        assert encoded not in text
        assert encoded.rstrip("=")[:16] not in text
        assert base64.urlsafe_b64encode(raw).decode().rstrip("=")[:16] not in text
        assert raw.hex() not in text and raw.hex()[:16] not in text
        assert raw.decode("latin-1") not in text


def test_the_key_id_names_a_key_stably_and_tells_keys_apart() -> None:
    first, second = generate_key(), generate_key()
    assert LocalKeyEncryptionKey(first).key_id == LocalKeyEncryptionKey(first).key_id
    assert LocalKeyEncryptionKey(first).key_id != LocalKeyEncryptionKey(second).key_id
    assert LocalKeyEncryptionKey(first).key_id.startswith("local:")


def test_a_wrapped_data_key_unwraps_only_with_its_kek_and_context() -> None:
    kek = LocalKeyEncryptionKey(generate_key())
    data_key = generate_key()
    user = uuid.uuid4()
    wrapped = kek.wrap(data_key, data_key_aad(user, 1))
    assert kek.unwrap(wrapped, data_key_aad(user, 1)) == data_key
    with pytest.raises(DecryptionFailed):
        kek.unwrap(wrapped, data_key_aad(user, 2))
    with pytest.raises(DecryptionFailed):
        kek.unwrap(wrapped, data_key_aad(uuid.uuid4(), 1))
    with pytest.raises(DecryptionFailed):
        LocalKeyEncryptionKey(generate_key()).unwrap(wrapped, data_key_aad(user, 1))


def test_a_new_master_key_is_base64_of_32_bytes_and_loads() -> None:
    encoded = new_master_key_base64()
    assert len(base64.b64decode(encoded, validate=True)) == KEY_BYTES
    LocalKeyEncryptionKey.from_base64(encoded)


def test_a_bad_master_key_is_refused_naming_where_it_came_from_never_quoting_it() -> None:
    short = base64.b64encode(b"k" * 16).decode()
    with pytest.raises(ValueError, match=r"^POSCAL_PREVIOUS_MASTER_KEYS entry 2 must be 32") as bad:
        LocalKeyEncryptionKey.from_base64(short, "POSCAL_PREVIOUS_MASTER_KEYS entry 2")
    assert short not in str(bad.value)
