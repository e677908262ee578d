"""Deleting a connection: its cloud terminal undeployed and removed at the service, its
credentials destroyed, the connection gone; its journal rows stay, unlinked from it."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from services.shared.connection_admin.connections import ConnectionNotFound
from services.shared.connection_admin.terminals import TerminalServices
from services.shared.database import Connection


@dataclass(frozen=True)
class DeletedConnection:
    connection_id: uuid.UUID
    # The service's id of the terminal removed with it, if it had one.
    removed_terminal: str | None
    credentials_destroyed: int


async def delete_connection(
    conn: Connection, connection_id: uuid.UUID, services: TerminalServices
) -> DeletedConnection:
    """Delete the connection. A cloud terminal is removed at its service first: the connection
    is marked as being deleted (never polled again), the terminal removed (one already gone at
    the service counts as removed), and only then is anything deleted here. If the service
    cannot remove it now (ProvisioningError), nothing is deleted and the connection stays out
    of the schedule: running this again finishes it.

    Credentials are deleted (ciphertext and all), not revoked: nothing of them is left to
    open. Everything else goes as when the user deletes a connection in the app: its journal
    rows stay (the user's history), unlinked from it."""
    async with conn.transaction():
        found = await conn.fetchrow(
            "SELECT c.broker, t.connection_id IS NOT NULL AS has_terminal"
            " FROM mt5_connections c LEFT JOIN cloud_terminals t ON t.connection_id = c.id"
            " WHERE c.id = $1 FOR UPDATE OF c",
            connection_id,
        )
        if found is None:
            raise ConnectionNotFound(connection_id)
        remote: str | None = None
        if found["has_terminal"]:
            # The terminal's id as this update finds it: one a provisioning run recorded after
            # the read above is seen here (and a run recording one later sees removing_at).
            remote = await conn.fetchval(
                "UPDATE cloud_terminals SET removing_at = coalesce(removing_at, now()),"
                " updated_at = now() WHERE connection_id = $1 RETURNING remote_account_id",
                connection_id,
            )
    if remote is not None:
        service = services(found["broker"])
        if service is None:  # a terminal whose broker lost its service: a broken install
            raise RuntimeError(f"no terminal service for {found['broker']} to remove {remote}")
        await service.remove(remote)
    async with conn.transaction():
        destroyed = await conn.fetchval(
            "WITH gone AS (DELETE FROM mt5_credentials WHERE connection_id = $1 RETURNING 1)"
            " SELECT count(*) FROM gone",
            connection_id,
        )
        await conn.execute("DELETE FROM cloud_terminals WHERE connection_id = $1", connection_id)
        await conn.execute("DELETE FROM mt5_connections WHERE id = $1", connection_id)
    return DeletedConnection(connection_id, remote, int(destroyed))
