"""Envelope encryption, pure: AES-256-GCM data keys wrapped by a key-encryption key (KEK)."""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import uuid
from typing import Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

NONCE_BYTES = 12
KEY_BYTES = 32


class DecryptionFailed(Exception):
    """Tampered ciphertext, wrong key or wrong associated data: all fail closed, alike."""


class KeyEncryptionKey(Protocol):
    """What wraps data keys: the local master key, or a KMS behind the same two calls."""

    @property
    def key_id(self) -> str: ...

    def wrap(self, data_key: bytes, aad: bytes) -> bytes: ...

    def unwrap(self, wrapped: bytes, aad: bytes) -> bytes: ...


def generate_key() -> bytes:
    return AESGCM.generate_key(bit_length=256)


def seal(key: bytes, plaintext: bytes, aad: bytes) -> bytes:
    """`nonce (12 bytes) || ciphertext+tag` with a fresh random nonce, bound by associated data
    to what it belongs to, so a ciphertext moved to another row fails to open."""
    nonce = os.urandom(NONCE_BYTES)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, aad)


def unseal(key: bytes, sealed: bytes, aad: bytes) -> bytes:
    if len(sealed) < NONCE_BYTES + 16:
        raise DecryptionFailed("ciphertext too short")
    try:
        return AESGCM(key).decrypt(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], aad)
    except InvalidTag:
        raise DecryptionFailed("ciphertext does not open with this key and context") from None


class LocalKeyEncryptionKey:
    """A KEK held in process memory, from `POSCAL_MASTER_KEY` (base64 of 32 bytes)."""

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_BYTES:
            raise ValueError(f"the master key must be {KEY_BYTES} bytes, got {len(key)}")
        self._key = key
        # A fingerprint names the key in stored rows without revealing it.
        self._key_id = "local:" + hashlib.sha256(b"poscal-kek-id" + key).hexdigest()[:16]

    @classmethod
    def from_base64(cls, encoded: str, name: str = "POSCAL_MASTER_KEY") -> LocalKeyEncryptionKey:
        """`name` says where the key came from in errors, which never quote the key."""
        try:
            key = base64.b64decode(encoded.strip(), validate=True)
        except (binascii.Error, ValueError):  # ValueError: non-ASCII text
            raise ValueError(f"{name} is not valid base64") from None
        if len(key) != KEY_BYTES:
            raise ValueError(f"{name} must be {KEY_BYTES} bytes (base64-encoded), got {len(key)}")
        return cls(key)

    @property
    def key_id(self) -> str:
        return self._key_id

    def wrap(self, data_key: bytes, aad: bytes) -> bytes:
        return seal(self._key, data_key, aad)

    def unwrap(self, wrapped: bytes, aad: bytes) -> bytes:
        return unseal(self._key, wrapped, aad)

    def __repr__(self) -> str:
        return f"LocalKeyEncryptionKey({self._key_id})"


def data_key_aad(user_id: uuid.UUID, version: int) -> bytes:
    return f"poscal/data-key/v1|user={user_id}|version={version}".encode()


def credential_aad(connection_id: uuid.UUID, kind: str, data_key_version: int) -> bytes:
    return (
        f"poscal/credential/v1|connection={connection_id}|kind={kind}|dk={data_key_version}"
    ).encode()


def new_master_key_base64() -> str:
    return base64.b64encode(generate_key()).decode("ascii")
