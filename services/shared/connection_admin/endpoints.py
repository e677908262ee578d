"""A connection's webhook endpoint, as its operator controls it: a new URL when the old one
leaked (the connection, its history and its event ids stay as they are), and locking it."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from services.shared.connection_admin.connections import (
    ConnectionNotFound,
    ConnectionRefused,
    webhook_url,
)
from services.shared.database import Connection

LOCKED_BY_OPERATOR = "webhooks locked by an operator: `connections unlock` or rotate-secret"


@dataclass(frozen=True)
class RotatedUrl:
    connection_id: uuid.UUID
    webhook_url: str


@dataclass(frozen=True)
class LockChange:
    connection_id: uuid.UUID
    lifecycle: str
    locked_at: datetime | None
    changed: bool


async def rotate_webhook_url(
    conn: Connection, connection_id: uuid.UUID, ingest_url: str
) -> RotatedUrl:
    """A new random URL for the connection; the old one stops at once (every ingest replica
    is told through the connection-change notification)."""
    row = await conn.fetchrow(
        "UPDATE mt5_connections SET webhook_path_id = gen_random_uuid(), updated_at = now()"
        " WHERE id = $1 AND lifecycle <> 'revoked' RETURNING broker, webhook_path_id",
        connection_id,
    )
    if row is None:
        raise await _missing_or_revoked(conn, connection_id)
    return RotatedUrl(connection_id, webhook_url(ingest_url, row["broker"], row["webhook_path_id"]))


async def lock_connection(
    conn: Connection, connection_id: uuid.UUID, reason: str | None = None
) -> LockChange:
    """Stop accepting the connection's webhooks, correctly signed or not (423 to those that
    verify). Polling, if any, goes on: the lock concerns the webhook endpoint.

    Only an operator locks a connection; ingest never does (failed verifications throttle their
    source only, so a stranger who knows the URL cannot lock its sender out). Locking is for a
    connection whose correctly signed deliveries must stop (say its secret is suspected
    stolen); rotating the secret or `unlock_connection` ends it."""
    row = await conn.fetchrow(
        "UPDATE mt5_connections SET lifecycle = 'locked', locked_at = now(), last_error = $2,"
        " updated_at = now() WHERE id = $1 AND lifecycle = 'active'"
        " RETURNING lifecycle, locked_at",
        connection_id,
        reason or LOCKED_BY_OPERATOR,
    )
    if row is not None:
        return LockChange(connection_id, row["lifecycle"], row["locked_at"], changed=True)
    return await _unchanged(conn, connection_id, already=("locked",))


async def unlock_connection(conn: Connection, connection_id: uuid.UUID) -> LockChange:
    """Accept the connection's webhooks again (its secret is unchanged: rotate it instead if
    it may have leaked)."""
    row = await conn.fetchrow(
        "UPDATE mt5_connections SET lifecycle = 'active', locked_at = NULL, last_error = NULL,"
        " updated_at = now() WHERE id = $1 AND lifecycle = 'locked' RETURNING lifecycle",
        connection_id,
    )
    if row is not None:
        return LockChange(connection_id, row["lifecycle"], None, changed=True)
    return await _unchanged(conn, connection_id, already=("active",))


async def _unchanged(
    conn: Connection, connection_id: uuid.UUID, *, already: tuple[str, ...]
) -> LockChange:
    """The connection as it is, if its lifecycle is `already` what was asked; else why not."""
    row = await conn.fetchrow(
        "SELECT lifecycle, locked_at FROM mt5_connections WHERE id = $1", connection_id
    )
    if row is None:
        raise ConnectionNotFound(connection_id)
    if row["lifecycle"] not in already:
        raise ConnectionRefused(
            f"connection {connection_id} is {row['lifecycle']}: only active or locked"
            " connections can be locked or unlocked"
        )
    return LockChange(connection_id, row["lifecycle"], row["locked_at"], changed=False)


async def _missing_or_revoked(conn: Connection, connection_id: uuid.UUID) -> ConnectionRefused:
    if await conn.fetchval(
        "SELECT EXISTS (SELECT 1 FROM mt5_connections WHERE id = $1)", connection_id
    ):
        return ConnectionRefused(f"connection {connection_id} is revoked")
    return ConnectionNotFound(connection_id)
