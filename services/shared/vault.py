"""The credential vault: secrets stored only as AES-256-GCM ciphertext under per-user data keys."""

from __future__ import annotations

import uuid
from datetime import datetime

from services.shared.crypto import (
    KeyEncryptionKey,
    credential_aad,
    data_key_aad,
    generate_key,
    seal,
    unseal,
)
from services.shared.database import Connection
from services.shared.keyring import KeyRing


class CredentialVault:
    """Seals and opens credentials; plaintext exists only in memory, never in a row or a log.

    Data keys are wrapped by the key ring: new ones by the current KEK, and each is unwrapped by
    the KEK its row names (`kek_id`), the current one or a previous one."""

    def __init__(self, kek: KeyEncryptionKey | KeyRing) -> None:
        self._keys = KeyRing.of(kek)

    @property
    def key_ring(self) -> KeyRing:
        return self._keys

    async def _current_data_key(self, conn: Connection, user_id: uuid.UUID) -> tuple[int, bytes]:
        row = await conn.fetchrow(
            "SELECT version, kek_id, wrapped_key FROM user_data_keys WHERE user_id = $1"
            " ORDER BY version DESC LIMIT 1",
            user_id,
        )
        if row is None:
            # Racing creators both try version 1; the loser reads the winner's key.
            wrapped = self._keys.wrap(generate_key(), data_key_aad(user_id, 1))
            await conn.execute(
                "INSERT INTO user_data_keys (user_id, version, kek_id, wrapped_key)"
                " VALUES ($1, 1, $2, $3) ON CONFLICT DO NOTHING",
                user_id,
                self._keys.key_id,
                wrapped,
            )
            return await self._current_data_key(conn, user_id)
        version: int = row["version"]
        return version, self._keys.unwrap_with(
            row["kek_id"], row["wrapped_key"], data_key_aad(user_id, version)
        )

    async def _data_key(self, conn: Connection, user_id: uuid.UUID, version: int) -> bytes:
        row = await conn.fetchrow(
            "SELECT kek_id, wrapped_key FROM user_data_keys WHERE user_id = $1 AND version = $2",
            user_id,
            version,
        )
        if row is None:
            raise LookupError(f"no data key version {version} for user {user_id}")
        return self._keys.unwrap_with(
            row["kek_id"], row["wrapped_key"], data_key_aad(user_id, version)
        )

    async def store(
        self,
        conn: Connection,
        *,
        user_id: uuid.UUID,
        connection_id: uuid.UUID,
        kind: str,
        plaintext: bytes,
        expires_at: datetime | None = None,
    ) -> uuid.UUID:
        version, data_key = await self._current_data_key(conn, user_id)
        ciphertext = seal(data_key, plaintext, credential_aad(connection_id, kind, version))
        credential_id: uuid.UUID = await conn.fetchval(
            "INSERT INTO mt5_credentials"
            " (connection_id, user_id, kind, ciphertext, data_key_version, expires_at)"
            " VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
            connection_id,
            user_id,
            kind,
            ciphertext,
            version,
            expires_at,
        )
        return credential_id

    async def seal_for(
        self,
        conn: Connection,
        *,
        user_id: uuid.UUID,
        subject_id: uuid.UUID,
        kind: str,
        plaintext: bytes,
    ) -> tuple[bytes, int]:
        """Seal under the user's current data key for a row that is no credential of a
        connection (a wizard session's, until it becomes one): the ciphertext and the data
        key's version, bound to `subject_id` and `kind` so it opens nowhere else."""
        version, data_key = await self._current_data_key(conn, user_id)
        return seal(data_key, plaintext, credential_aad(subject_id, kind, version)), version

    async def open_sealed(
        self,
        conn: Connection,
        *,
        user_id: uuid.UUID,
        subject_id: uuid.UUID,
        kind: str,
        ciphertext: bytes,
        data_key_version: int,
    ) -> bytes:
        """What `seal_for` sealed."""
        data_key = await self._data_key(conn, user_id, data_key_version)
        return unseal(data_key, ciphertext, credential_aad(subject_id, kind, data_key_version))

    async def open_active(
        self, conn: Connection, connection_id: uuid.UUID, kind: str, now: datetime
    ) -> list[bytes]:
        """Every unexpired, unrevoked credential of this kind, newest first."""
        return [
            plaintext
            for _, plaintext in await self.open_active_rows(conn, connection_id, kind, now)
        ]

    async def open_active_rows(
        self, conn: Connection, connection_id: uuid.UUID, kind: str, now: datetime
    ) -> list[tuple[uuid.UUID, bytes]]:
        """The same, each with its row id (to revoke one)."""
        rows = await conn.fetch(
            "SELECT id, user_id, ciphertext, data_key_version FROM mt5_credentials"
            " WHERE connection_id = $1 AND kind = $2 AND revoked_at IS NULL"
            " AND (expires_at IS NULL OR expires_at > $3) ORDER BY created_at DESC",
            connection_id,
            kind,
            now,
        )
        keys: dict[tuple[uuid.UUID, int], bytes] = {}
        opened = []
        for row in rows:
            ref = (row["user_id"], row["data_key_version"])
            if ref not in keys:
                keys[ref] = await self._data_key(conn, *ref)
            plaintext = unseal(
                keys[ref],
                row["ciphertext"],
                credential_aad(connection_id, kind, row["data_key_version"]),
            )
            opened.append((row["id"], plaintext))
        return opened
