"""Creating broker connections: the account, the connection, its webhook URL and secret (shown
once); a broker with a poll adapter is also put on the poller's schedule."""

from __future__ import annotations

import os
import random
import uuid
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit

import asyncpg

from services.shared.brokers import UnknownBroker, broker
from services.shared.credential_kinds import WEBHOOK_SECRET
from services.shared.database import Connection
from services.shared.signatures import encode_secret
from services.shared.vault import CredentialVault

MAX_LABEL_LENGTH = 200  # as mt5_connections_account_label_check has it

_SCHEDULE = """
INSERT INTO sync_schedule (connection_id, user_id, interval_seconds, next_sync_at)
SELECT id, user_id, $2::integer, now() + make_interval(secs => $2::integer * $3::float8)
FROM mt5_connections WHERE id = $1
ON CONFLICT (connection_id) DO NOTHING
"""


async def schedule_connection(
    conn: asyncpg.Connection | asyncpg.pool.PoolConnectionProxy,
    connection_id: uuid.UUID,
    interval_seconds: int = 60,
    spread: float = 0.0,
) -> None:
    """Put a polled connection on the schedule: first sync within `spread` of an interval."""
    await conn.execute(_SCHEDULE, connection_id, interval_seconds, spread)


class ConnectionRefused(Exception):
    """A connection command cannot do as asked; the message says why, for the operator."""


class ConnectionNotFound(ConnectionRefused):
    def __init__(self, connection_id: uuid.UUID) -> None:
        super().__init__(f"no connection {connection_id}")
        self.connection_id = connection_id


@dataclass(frozen=True)
class NewConnection:
    connection_id: uuid.UUID
    account_id: uuid.UUID
    webhook_url: str
    webhook_secret: str
    polled: bool = False

    def __repr__(self) -> str:
        return f"NewConnection({self.connection_id})"


def webhook_url(base_url: str, broker: str, webhook_path_id: uuid.UUID) -> str:
    """Ends in the connection's random path id, not its id: `rotate-url` can replace it."""
    return f"{base_url.rstrip('/')}/v1/webhooks/{broker}/{webhook_path_id}"


def is_polled(broker_name: str) -> bool:
    """Whether a new connection of this broker is polled (its plug-in has a poll adapter, and
    needs no cloud terminal provisioned first)."""
    try:
        return broker(broker_name).scheduled_when_created
    except UnknownBroker:
        return False


def _needs_server(broker_name: str) -> bool:
    try:
        return broker(broker_name).needs_server
    except UnknownBroker:
        return False


def _checked_api_url(api_url: str | None) -> str | None:
    if api_url is None:
        return None
    parts = urlsplit(api_url)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
        raise ConnectionRefused(f"--api-url must be an http(s) base URL, got {api_url!r}")
    return api_url.rstrip("/")


async def create_connection(
    conn: Connection,
    vault: CredentialVault,
    *,
    user_id: uuid.UUID,
    broker: str,
    connection_type: Literal["demo", "live"],
    account_number: str,
    server: str,
    account_label: str,
    ingest_url: str,
    api_url: str | None = None,
    poll_interval_seconds: int = 60,
    check_user: bool = True,
) -> NewConnection:
    """A live connection is created unable to sync until `enable-live` allows it.
    `check_user=False` for a caller that knows the user exists (the app API, for a user whose
    wizard session it holds: the session's row references them), as service_role may not read
    auth.users."""
    if not account_number.strip():
        raise ConnectionRefused("--account-number must not be blank")
    if not account_label.strip() or len(account_label) > MAX_LABEL_LENGTH:
        raise ConnectionRefused(f"--label must be 1 to {MAX_LABEL_LENGTH} characters, not blank")
    if _needs_server(broker) and not server.strip():
        raise ConnectionRefused(f"--server must not be blank for {broker}")
    polled = is_polled(broker)
    api_url = _checked_api_url(api_url)
    async with conn.transaction():
        if check_user and not await conn.fetchval(
            "SELECT EXISTS (SELECT 1 FROM auth.users WHERE id = $1)", user_id
        ):
            raise ConnectionRefused(f"no user {user_id} in auth.users")
        account_id: uuid.UUID = await conn.fetchval(
            "INSERT INTO trading_accounts (user_id, name, broker, account_number, account_type)"
            " VALUES ($1, $2, $3, $4, $5) RETURNING id",
            user_id,
            account_label,
            broker,
            account_number,
            connection_type,
        )
        try:
            created = await conn.fetchrow(
                "INSERT INTO mt5_connections (user_id, account_id, broker, connection_type,"
                " account_number, server, account_label, api_url)"
                " VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id, webhook_path_id",
                user_id,
                account_id,
                broker,
                connection_type,
                account_number,
                server,
                account_label,
                api_url,
            )
        except asyncpg.UniqueViolationError:
            raise ConnectionRefused(
                f"{broker} account {account_number} on {server!r} is already connected"
            ) from None
        assert created is not None
        connection_id: uuid.UUID = created["id"]
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
            kind=WEBHOOK_SECRET,
            plaintext=key,
        )
        if polled:
            # Staggered: the first sync falls anywhere in the first interval.
            await schedule_connection(
                conn,
                connection_id,
                poll_interval_seconds,
                spread=random.random(),  # noqa: S311
            )
    return NewConnection(
        connection_id=connection_id,
        account_id=account_id,
        webhook_url=webhook_url(ingest_url, broker, created["webhook_path_id"]),
        webhook_secret=encode_secret(key),
        polled=polled,
    )


async def create_user(conn: Connection, email: str) -> uuid.UUID:
    """A user in the plain-Postgres auth shim (on Supabase, users sign up through Supabase)."""
    user_id: uuid.UUID = await conn.fetchval(
        "INSERT INTO auth.users (email) VALUES ($1)"
        " ON CONFLICT (email) DO UPDATE SET email = EXCLUDED.email RETURNING id",
        email,
    )
    return user_id
