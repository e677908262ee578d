"""Demo before live: a live connection syncs only once its user has synced a demo connection
of the same broker successfully, so a broken setup is found with play money."""

from __future__ import annotations

import uuid
from datetime import datetime

from services.shared.connection_admin.connections import ConnectionNotFound, ConnectionRefused
from services.shared.database import Connection

_DEMO_SYNCED = """
SELECT EXISTS (
    SELECT 1 FROM mt5_connections d
    LEFT JOIN sync_schedule s ON s.connection_id = d.id
    WHERE d.user_id = $1 AND d.broker = $2 AND d.connection_type = 'demo'
      AND (d.last_sync_at IS NOT NULL OR s.last_success_at IS NOT NULL))
"""


async def demo_synced(conn: Connection, user_id: uuid.UUID, broker: str) -> bool:
    """Whether the user has a demo connection of `broker` that has synced successfully."""
    return bool(await conn.fetchval(_DEMO_SYNCED, user_id, broker))


def demo_first(title: str) -> str:
    """What a user without a synced demo connection of the broker is told to do first."""
    return (
        f"a live {title} connection is enabled only once one of your demo {title} connections"
        f" has synced successfully: connect a demo {title} account first, let its first sync"
        " finish, then connect the live one"
    )


async def enable_live(conn: Connection, connection_id: uuid.UUID) -> datetime:
    """When the live connection was (or already had been) enabled; refuses with the reason."""
    async with conn.transaction():
        row = await conn.fetchrow(
            "SELECT user_id, broker, connection_type, lifecycle, live_enabled_at"
            " FROM mt5_connections WHERE id = $1 FOR UPDATE",
            connection_id,
        )
        if row is None:
            raise ConnectionNotFound(connection_id)
        if row["connection_type"] != "live":
            raise ConnectionRefused(
                f"connection {connection_id} is a demo connection: only live ones need enabling"
            )
        if row["lifecycle"] == "revoked":
            raise ConnectionRefused(f"connection {connection_id} is revoked")
        if row["live_enabled_at"] is not None:
            enabled: datetime = row["live_enabled_at"]
            return enabled
        if not await demo_synced(conn, row["user_id"], row["broker"]):
            raise ConnectionRefused(
                f"connection {connection_id} stays disabled: user {row['user_id']} has no"
                f" {row['broker']} demo connection that has synced successfully yet. Create one"
                " (`poscal-sync connections create --type demo ...`), let it sync, then enable"
                " this one."
            )
        enabled_at: datetime = await conn.fetchval(
            "UPDATE mt5_connections SET live_enabled_at = now(), updated_at = now()"
            " WHERE id = $1 RETURNING live_enabled_at",
            connection_id,
        )
    return enabled_at
