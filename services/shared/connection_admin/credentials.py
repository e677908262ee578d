"""A connection's credentials, replaced by the operator: broker sign-in credentials, the webhook
secret (rotated with an overlap; rotating unlocks a locked connection), Ed25519 public keys."""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from services.shared.connection_admin.connections import ConnectionNotFound, ConnectionRefused
from services.shared.connection_admin.inputs import encode_public_key, parse_broker_credential
from services.shared.credential_kinds import (
    BROKER_CREDENTIALS,
    WEBHOOK_PUBLIC_KEY,
    WEBHOOK_SECRET,
)
from services.shared.database import Connection
from services.shared.signatures import encode_secret
from services.shared.vault import CredentialVault

WEBHOOK_SECRET_BYTES = 32


@dataclass(frozen=True)
class _Target:
    user_id: uuid.UUID
    broker: str
    lifecycle: str


@dataclass(frozen=True)
class StoredCredential:
    connection_id: uuid.UUID
    stored_at: datetime


@dataclass(frozen=True)
class RotatedSecret:
    connection_id: uuid.UUID
    webhook_secret: str
    # When the replaced secrets stop verifying; None when there were none still active.
    previous_secrets_expire_at: datetime | None
    unlocked: bool

    def __repr__(self) -> str:  # never print the secret
        return f"RotatedSecret({self.connection_id})"


async def _lock_connection(conn: Connection, connection_id: uuid.UUID) -> _Target:
    """The connection, its row locked until the command's transaction ends: each command is one
    transaction holding it, so two operators acting on the same connection at once are
    serialised and neither sees the other's half-done change."""
    row = await conn.fetchrow(
        "SELECT user_id, broker, lifecycle FROM mt5_connections WHERE id = $1 FOR UPDATE",
        connection_id,
    )
    if row is None:
        raise ConnectionNotFound(connection_id)
    if row["lifecycle"] == "revoked":
        raise ConnectionRefused(f"connection {connection_id} is revoked")
    return _Target(row["user_id"], row["broker"], row["lifecycle"])


async def _created_at(conn: Connection, credential_id: uuid.UUID) -> datetime:
    created_at: datetime = await conn.fetchval(
        "SELECT created_at FROM mt5_credentials WHERE id = $1", credential_id
    )
    return created_at


async def set_broker_credentials(
    conn: Connection, vault: CredentialVault, connection_id: uuid.UUID, text: str
) -> StoredCredential:
    """Seal what the operator gave as the connection's broker credentials, checked for its
    broker (see `parse_broker_credential`), and revoke the ones it replaces, forced-rotation
    marks included. The connection's status is left as it is."""
    async with conn.transaction():
        target = await _lock_connection(conn, connection_id)
        plaintext = parse_broker_credential(target.broker, text)
        await conn.execute(
            "UPDATE mt5_credentials SET revoked_at = now()"
            " WHERE connection_id = $1 AND kind = $2 AND revoked_at IS NULL",
            connection_id,
            BROKER_CREDENTIALS,
        )
        credential_id = await vault.store(
            conn,
            user_id=target.user_id,
            connection_id=connection_id,
            kind=BROKER_CREDENTIALS,
            plaintext=plaintext,
        )
        return StoredCredential(connection_id, await _created_at(conn, credential_id))


DEFAULT_OVERLAP = timedelta(hours=24)


async def rotate_webhook_secret(
    conn: Connection, vault: CredentialVault, connection_id: uuid.UUID, overlap: timedelta | None
) -> RotatedSecret:
    """A new webhook secret; the active ones it replaces keep verifying for `overlap` at most
    (0: not at all). Rotation clears forced-rotation marks and unlocks a locked connection.

    Without an explicit overlap: 24 hours, except for a locked connection, whose old secret is
    suspect (an operator locks a connection whose secret may be stolen): it stops verifying at
    once."""
    async with conn.transaction():
        target = await _lock_connection(conn, connection_id)
        if overlap is None:
            overlap = timedelta(0) if target.lifecycle == "locked" else DEFAULT_OVERLAP
        replaced = await conn.fetch(
            "UPDATE mt5_credentials SET expires_at = least(expires_at, now() + $3::interval)"
            " WHERE connection_id = $1 AND kind = $2 AND revoked_at IS NULL"
            " AND (expires_at IS NULL OR expires_at > now()) RETURNING expires_at",
            connection_id,
            WEBHOOK_SECRET,
            overlap,
        )
        await conn.execute(
            "UPDATE mt5_credentials SET rotation_forced_at = NULL, rotation_forced_reason = NULL"
            " WHERE connection_id = $1 AND kind = $2 AND rotation_forced_at IS NOT NULL",
            connection_id,
            WEBHOOK_SECRET,
        )
        key = os.urandom(WEBHOOK_SECRET_BYTES)
        await vault.store(
            conn,
            user_id=target.user_id,
            connection_id=connection_id,
            kind=WEBHOOK_SECRET,
            plaintext=key,
        )
        unlocked = target.lifecycle == "locked"
        if unlocked:
            await conn.execute(
                "UPDATE mt5_connections SET lifecycle = 'active', locked_at = NULL,"
                " last_error = NULL, updated_at = now() WHERE id = $1",
                connection_id,
            )
            await conn.execute(
                "UPDATE mt5_security_audit SET consecutive_failures = 0, updated_at = now()"
                " WHERE connection_id = $1",
                connection_id,
            )
    return RotatedSecret(
        connection_id=connection_id,
        webhook_secret=encode_secret(key),
        previous_secrets_expire_at=max((r["expires_at"] for r in replaced), default=None),
        unlocked=unlocked,
    )


async def add_public_key(
    conn: Connection, vault: CredentialVault, connection_id: uuid.UUID, raw_key: bytes
) -> StoredCredential:
    """Add an Ed25519 key (already checked by `parse_public_key`) that verifies `v1a`
    signatures; one already active on the connection is refused rather than stored twice."""
    async with conn.transaction():
        target = await _lock_connection(conn, connection_id)
        active = await vault.open_active(
            conn, connection_id, WEBHOOK_PUBLIC_KEY, await conn.fetchval("SELECT now()")
        )
        if raw_key in active:
            raise ConnectionRefused(
                f"{encode_public_key(raw_key)} is already a webhook public key of"
                f" connection {connection_id}"
            )
        credential_id = await vault.store(
            conn,
            user_id=target.user_id,
            connection_id=connection_id,
            kind=WEBHOOK_PUBLIC_KEY,
            plaintext=raw_key,
        )
        return StoredCredential(connection_id, await _created_at(conn, credential_id))


async def revoke_public_key(
    conn: Connection, vault: CredentialVault, connection_id: uuid.UUID, raw_key: bytes
) -> datetime:
    """Stop an Ed25519 key verifying (a leaked sender key); when it was revoked."""
    async with conn.transaction():
        await _lock_connection(conn, connection_id)
        now: datetime = await conn.fetchval("SELECT now()")
        active = await vault.open_active_rows(conn, connection_id, WEBHOOK_PUBLIC_KEY, now)
        matching = [row_id for row_id, key in active if key == raw_key]
        if not matching:
            raise ConnectionRefused(
                f"{encode_public_key(raw_key)} is not an active webhook public key of"
                f" connection {connection_id}"
            )
        await conn.execute(
            "UPDATE mt5_credentials SET revoked_at = $2 WHERE id = ANY($1::uuid[])", matching, now
        )
    return now
