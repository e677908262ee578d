"""Creating broker connections: the account, the connection, and its webhook secret (shown once)."""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from typing import Literal

import asyncpg

from services.ingest.connections import WEBHOOK_SECRET_KIND
from services.ingest.signatures import encode_secret
from services.shared.database import Connection
from services.shared.vault import CredentialVault


class ConnectionRefused(Exception):
    """The connection cannot be created as asked; the message says why, for the operator."""


@dataclass(frozen=True)
class NewConnection:
    connection_id: uuid.UUID
    account_id: uuid.UUID
    webhook_url: str
    webhook_secret: str

    def __repr__(self) -> str:
        return f"NewConnection({self.connection_id})"


def webhook_url(base_url: str, broker: str, connection_id: uuid.UUID) -> str:
    return f"{base_url.rstrip('/')}/v1/webhooks/{broker}/{connection_id}"


async def create_connection(
    conn: Connection,
    vault: CredentialVault,
    *,
    user_id: uuid.UUID,
    broker: str,
    connection_type: Literal["demo", "live"],
    account_number: str,
    server: str,
    label: str,
    ingest_url: str,
) -> NewConnection:
    if not account_number.strip() or not server.strip():
        # Trade ids embed server and login: a blank one would accept no webhook at all.
        raise ConnectionRefused("--account-number and --server must not be blank")
    async with conn.transaction():
        if not await conn.fetchval(
            "SELECT EXISTS (SELECT 1 FROM auth.users WHERE id = $1)", user_id
        ):
            raise ConnectionRefused(f"no user {user_id} in auth.users")
        account_id: uuid.UUID = await conn.fetchval(
            "INSERT INTO trading_accounts (user_id, name, broker, account_number, account_type)"
            " VALUES ($1, $2, $3, $4, $5) RETURNING id",
            user_id,
            label,
            broker,
            account_number,
            connection_type,
        )
        try:
            connection_id: uuid.UUID = await conn.fetchval(
                "INSERT INTO mt5_connections (user_id, account_id, broker, connection_type,"
                " account_number, server, label) VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
                user_id,
                account_id,
                broker,
                connection_type,
                account_number,
                server,
                label,
            )
        except asyncpg.UniqueViolationError:
            raise ConnectionRefused(
                f"{broker} account {account_number} on {server!r} is already connected"
            ) from None
        await conn.execute(
            "INSERT INTO mt5_security_audit (connection_id, user_id) VALUES ($1, $2)",
            connection_id,
            user_id,
        )
        key = os.urandom(32)
        await vault.store(
            conn,
            user_id=user_id,
            connection_id=connection_id,
            kind=WEBHOOK_SECRET_KIND,
            plaintext=key,
        )
    return NewConnection(
        connection_id=connection_id,
        account_id=account_id,
        webhook_url=webhook_url(ingest_url, broker, connection_id),
        webhook_secret=encode_secret(key),
    )


async def create_user(conn: Connection, email: str) -> uuid.UUID:
    """A user in the plain-Postgres auth shim (on Supabase, users sign up through Supabase)."""
    user_id: uuid.UUID = await conn.fetchval(
        "INSERT INTO auth.users (email) VALUES ($1)"
        " ON CONFLICT (email) DO UPDATE SET email = EXCLUDED.email RETURNING id",
        email,
    )
    return user_id
