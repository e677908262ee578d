"""Key-encryption-key rotation, pure: the current KEK wraps new data keys, and it or any previous
KEK unwraps a data key by the `kek_id` stored beside it."""

from __future__ import annotations

from collections.abc import Iterable
from typing import cast

from services.shared.crypto import DecryptionFailed, KeyEncryptionKey, LocalKeyEncryptionKey
from services.shared.providers import provided


class UnknownKeyEncryptionKey(DecryptionFailed):
    """A data key is wrapped under a KEK that is neither the current one nor a previous one.

    Names the KEK by its id (a fingerprint), never by the key itself.
    """

    def __init__(self, kek_id: str) -> None:
        super().__init__(
            f"a data key is wrapped under key-encryption key {kek_id!r}, which is neither the"
            " current master key nor one of POSCAL_PREVIOUS_MASTER_KEYS"
        )
        self.kek_id = kek_id


class KeyRing:
    """The current KEK plus previous ones. As a KeyEncryptionKey it is its current key; the
    vault unwraps through `unwrap_with`, which picks the key a data key was wrapped under.

    Previous keys are what lets the master key change with no downtime: the runbook is
    `rotate_data_keys` (services/cli/keys.py)."""

    def __init__(
        self, current: KeyEncryptionKey, previous: Iterable[KeyEncryptionKey] = ()
    ) -> None:
        self._current = current
        self._by_id: dict[str, KeyEncryptionKey] = {}
        for kek in previous:
            self._by_id.setdefault(kek.key_id, kek)
        self._by_id[current.key_id] = current

    @classmethod
    def of(cls, kek: KeyEncryptionKey | KeyRing) -> KeyRing:
        """A ring as is, or a lone KEK as a ring with no previous keys."""
        return kek if isinstance(kek, KeyRing) else cls(kek)

    @property
    def current(self) -> KeyEncryptionKey:
        return self._current

    @property
    def key_id(self) -> str:
        return self._current.key_id

    @property
    def previous_ids(self) -> tuple[str, ...]:
        return tuple(kek_id for kek_id in self._by_id if kek_id != self.key_id)

    def knows(self, kek_id: str) -> bool:
        return kek_id in self._by_id

    def find(self, kek_id: str) -> KeyEncryptionKey:
        try:
            return self._by_id[kek_id]
        except KeyError:
            raise UnknownKeyEncryptionKey(kek_id) from None

    def wrap(self, data_key: bytes, aad: bytes) -> bytes:
        return self._current.wrap(data_key, aad)

    def unwrap(self, wrapped: bytes, aad: bytes) -> bytes:
        return self._current.unwrap(wrapped, aad)

    def unwrap_with(self, kek_id: str, wrapped: bytes, aad: bytes) -> bytes:
        """Unwrap with the KEK named `kek_id`; fails closed if the ring does not hold it."""
        return self.find(kek_id).unwrap(wrapped, aad)

    def rewrap(self, kek_id: str, wrapped: bytes, aad: bytes) -> bytes:
        """The same data key, wrapped under the current KEK (with the same associated data)."""
        return self.wrap(self.unwrap_with(kek_id, wrapped, aad), aad)

    def __repr__(self) -> str:
        return f"KeyRing(current={self.key_id}, previous={list(self.previous_ids)})"


def load_kek_provider(spec: str) -> KeyEncryptionKey:
    """A KMS-backed key-encryption key from `POSCAL_KEK_PROVIDER` = `package.module:factory`:
    the factory is called with no arguments (it reads its own configuration) and returns an
    object with `key_id`, `wrap` and `unwrap`."""
    kek = provided(
        spec, "POSCAL_KEK_PROVIDER", ("key_id", "wrap", "unwrap"), "a key-encryption key"
    )
    return cast(KeyEncryptionKey, kek)


def load_key_ring(
    master_key: str | None,
    previous_master_keys: str | None = None,
    provider: str | None = None,
) -> KeyRing:
    """The ring from `POSCAL_MASTER_KEY` and `POSCAL_PREVIOUS_MASTER_KEYS` (comma-separated
    base64 of 32 bytes each; blank entries are ignored), or with `POSCAL_KEK_PROVIDER` a KMS key
    as the current one (a master key given too then only unwraps what it wrapped: the way from
    a local key to a KMS). Errors never quote a key."""
    entries = [e.strip() for e in (previous_master_keys or "").split(",")]
    previous: list[KeyEncryptionKey] = [
        LocalKeyEncryptionKey.from_base64(encoded, f"POSCAL_PREVIOUS_MASTER_KEYS entry {position}")
        for position, encoded in enumerate(entries, start=1)
        if encoded
    ]
    if provider:
        if master_key:
            previous.insert(0, LocalKeyEncryptionKey.from_base64(master_key))
        return KeyRing(load_kek_provider(provider), previous)
    if not master_key:
        raise ValueError("POSCAL_MASTER_KEY is not set (base64 of 32 bytes)")
    return KeyRing(LocalKeyEncryptionKey.from_base64(master_key), previous)
