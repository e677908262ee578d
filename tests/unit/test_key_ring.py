"""A key ring wraps under the current master key and unwraps under whichever key a data key names,
current or previous; a key it does not hold fails closed, named by its id, never by the key."""

from __future__ import annotations

import base64
import uuid

import pytest

from services.shared.crypto import (
    DecryptionFailed,
    KeyEncryptionKey,
    LocalKeyEncryptionKey,
    data_key_aad,
    generate_key,
    new_master_key_base64,
)
from services.shared.keyring import KeyRing, UnknownKeyEncryptionKey, load_key_ring

AAD = data_key_aad(uuid.UUID("1c7a4d63-6e1f-4a68-8b8f-4a2c2d3e5f60"), 1)
DATA_KEY = bytes(range(32))


def kek() -> LocalKeyEncryptionKey:
    return LocalKeyEncryptionKey(generate_key())


def test_a_ring_wraps_under_its_current_key_and_names_it() -> None:
    current, old = kek(), kek()
    ring = KeyRing(current, [old])

    wrapped = ring.wrap(DATA_KEY, AAD)

    assert ring.key_id == current.key_id
    assert current.unwrap(wrapped, AAD) == DATA_KEY
    with pytest.raises(DecryptionFailed):
        old.unwrap(wrapped, AAD)


def test_a_ring_unwraps_under_the_key_a_data_key_names_current_or_previous() -> None:
    current, old, older = kek(), kek(), kek()
    ring = KeyRing(current, [old, older])

    for key in (current, old, older):
        assert ring.unwrap_with(key.key_id, key.wrap(DATA_KEY, AAD), AAD) == DATA_KEY


def test_a_key_id_the_ring_does_not_hold_fails_closed_naming_only_the_id() -> None:
    raw_key = generate_key()
    stranger = LocalKeyEncryptionKey(raw_key)
    raw = base64.b64encode(raw_key).decode()
    ring = KeyRing(kek(), [kek()])

    with pytest.raises(UnknownKeyEncryptionKey) as refused:
        ring.unwrap_with(stranger.key_id, stranger.wrap(DATA_KEY, AAD), AAD)

    assert refused.value.kek_id == stranger.key_id
    assert stranger.key_id in str(refused.value)
    assert raw not in str(refused.value) and raw[:16] not in str(refused.value)
    # Whoever catches a failed decryption catches this one too: nothing opens.
    assert isinstance(refused.value, DecryptionFailed)


def test_a_data_key_under_a_named_key_that_was_tampered_with_fails_closed() -> None:
    current = kek()
    wrapped = bytearray(current.wrap(DATA_KEY, AAD))
    wrapped[-1] ^= 1
    with pytest.raises(DecryptionFailed):
        KeyRing(current).unwrap_with(current.key_id, bytes(wrapped), AAD)


def test_rewrapping_moves_a_data_key_under_the_current_key_unchanged() -> None:
    current, old = kek(), kek()
    ring = KeyRing(current, [old])

    rewrapped = ring.rewrap(old.key_id, old.wrap(DATA_KEY, AAD), AAD)

    assert KeyRing(current).unwrap_with(current.key_id, rewrapped, AAD) == DATA_KEY


def test_a_lone_key_is_a_ring_with_no_previous_keys_and_a_ring_stays_itself() -> None:
    current = kek()
    ring = KeyRing.of(current)
    assert ring.key_id == current.key_id and ring.previous_ids == ()
    assert KeyRing.of(ring) is ring


def test_any_key_encryption_key_can_be_current_or_previous() -> None:
    class FakeKms:
        """Stands for a KMS: any object with the protocol's three members."""

        key_id = "kms:arn:test"

        def wrap(self, data_key: bytes, aad: bytes) -> bytes:
            return bytes(reversed(data_key)) + aad

        def unwrap(self, wrapped: bytes, aad: bytes) -> bytes:
            return bytes(reversed(wrapped[: -len(aad)]))

    kms: KeyEncryptionKey = FakeKms()
    local = kek()
    moved_off_kms = KeyRing(local, [kms]).rewrap(kms.key_id, kms.wrap(DATA_KEY, AAD), AAD)
    assert local.unwrap(moved_off_kms, AAD) == DATA_KEY
    moved_onto_kms = KeyRing(kms, [local]).rewrap(local.key_id, local.wrap(DATA_KEY, AAD), AAD)
    assert kms.unwrap(moved_onto_kms, AAD) == DATA_KEY


def test_the_current_key_listed_as_previous_too_is_held_once() -> None:
    current = kek()
    ring = KeyRing(current, [current, current])
    assert ring.previous_ids == ()


# --- from the environment ------------------------------------------------------------------


def test_the_ring_loads_from_the_master_key_and_comma_separated_previous_keys() -> None:
    current, old, older = (new_master_key_base64() for _ in range(3))

    ring = load_key_ring(current, f" {old} ,{older},")

    assert ring.key_id == LocalKeyEncryptionKey.from_base64(current).key_id
    assert set(ring.previous_ids) == {
        LocalKeyEncryptionKey.from_base64(old).key_id,
        LocalKeyEncryptionKey.from_base64(older).key_id,
    }


@pytest.mark.parametrize("previous", [None, "", " , "])
def test_no_previous_keys_is_a_ring_of_the_master_key_alone(previous: str | None) -> None:
    assert load_key_ring(new_master_key_base64(), previous).previous_ids == ()


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        ("not base64!", "is not valid base64"),
        (base64.b64encode(b"k" * 16).decode(), "must be 32 bytes"),
    ],
)
def test_a_bad_previous_key_is_refused_by_position_without_quoting_it(
    bad: str, reason: str
) -> None:
    with pytest.raises(ValueError, match=f"entry 2 {reason}") as refused:
        load_key_ring(new_master_key_base64(), f"{new_master_key_base64()},{bad}")
    assert bad not in str(refused.value)


@pytest.mark.parametrize(
    ("bad", "reason"), [("not base64!", "is not valid base64"), ("nope", "must be 32 bytes")]
)
def test_a_bad_master_key_is_refused_by_name(bad: str, reason: str) -> None:
    with pytest.raises(ValueError, match=f"^POSCAL_MASTER_KEY {reason}"):
        load_key_ring(bad, None)


def test_the_ring_never_shows_a_key_in_its_repr() -> None:
    current, old = new_master_key_base64(), new_master_key_base64()
    text = repr(load_key_ring(current, old))
    assert current not in text and old not in text
    assert LocalKeyEncryptionKey.from_base64(old).key_id in text


# --- a KMS as the key-encryption key --------------------------------------------------------

KMS = "tests.support.kms:create"


def test_a_kms_provider_becomes_the_current_key() -> None:
    ring = load_key_ring(None, provider=KMS)
    assert ring.key_id.startswith("kms:")
    wrapped = ring.wrap(b"d" * 32, b"aad")
    assert ring.unwrap_with(ring.key_id, wrapped, b"aad") == b"d" * 32


def test_moving_from_a_master_key_to_a_kms_keeps_the_old_key_for_unwrapping() -> None:
    local = new_master_key_base64()
    before = load_key_ring(local)
    wrapped = before.wrap(b"d" * 32, b"aad")
    after = load_key_ring(local, provider=KMS)
    assert after.key_id.startswith("kms:") and before.key_id in after.previous_ids
    assert after.rewrap(before.key_id, wrapped, b"aad") != wrapped


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("tests.support.kms", "must be 'package.module:factory'"),
        ("tests.support.nowhere:create", "cannot be loaded"),
        ("tests.support.kms:_KMS_KEY", "is not callable"),
        ("builtins:object", "did not return a key-encryption key"),
    ],
)
def test_a_bad_provider_is_refused_clearly(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_key_ring(None, provider=spec)


def test_no_key_at_all_is_refused_clearly() -> None:
    with pytest.raises(ValueError, match="POSCAL_MASTER_KEY is not set"):
        load_key_ring(None)
