"""Connections on the poller's schedule, for specifications of the poller against Postgres."""

from __future__ import annotations

import asyncpg

from services.shared import credential_kinds
from services.shared.connection_admin.connections import schedule_connection
from services.shared.vault import CredentialVault
from tests.support.builders import TestConnection, new_connection

TOKEN = b"scripted-broker-token"


async def polled(
    pool: asyncpg.Pool, vault: CredentialVault, connection: TestConnection | None = None
) -> TestConnection:
    """A connection on the schedule, due now, with broker credentials stored."""
    async with pool.acquire() as conn:
        connection = connection or await new_connection(conn, vault)
        await schedule_connection(conn, connection.created.connection_id)
        await conn.execute(
            "UPDATE sync_schedule SET next_sync_at = now() - interval '1 second'"
            " WHERE connection_id = $1",
            connection.created.connection_id,
        )
        await vault.store(
            conn,
            user_id=connection.user_id,
            connection_id=connection.created.connection_id,
            kind=credential_kinds.BROKER_CREDENTIALS,
            plaintext=TOKEN,
        )
    return connection
