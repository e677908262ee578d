"""The demo: a demo MT5 connection, then a stream of signed deal webhooks, with progress."""

from __future__ import annotations

import asyncio
import secrets
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import asyncpg
import httpx
import orjson

from services.devstack.demo_trades import DemoAccount, demo_stream
from services.shared.connection_admin.connections import (
    NewConnection,
    create_connection,
    create_user,
)
from services.shared.crypto import LocalKeyEncryptionKey
from services.shared.database import Connection
from services.shared.signatures import decode_secret, sign
from services.shared.vault import CredentialVault

DEMO_SERVER = "PosCal-Demo"


def demo_account() -> DemoAccount:
    """A fresh demo login each run, so the demo also runs against a database kept from before."""
    return DemoAccount(login=50_000_000 + secrets.randbelow(9_999_999), server=DEMO_SERVER)


def encode_body(body: dict[str, Any]) -> bytes:
    return orjson.dumps(body, default=_decimal_as_number)


def _decimal_as_number(value: object) -> Any:
    if isinstance(value, Decimal):
        return orjson.Fragment(str(value).encode())  # exact text, as the EA would print it
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def signed_headers(
    secret: str, webhook_id: str, body: bytes, now: float | None = None
) -> dict[str, str]:
    timestamp = int(now if now is not None else time.time())
    return {
        "content-type": "application/json",
        "webhook-id": webhook_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(decode_secret(secret), webhook_id, timestamp, body),
    }


async def send_signed(
    client: httpx.AsyncClient, connection: NewConnection, body: bytes, webhook_id: str | None = None
) -> httpx.Response:
    """POST one webhook to a connection, signed with its secret, as a bridge or EA would."""
    webhook_id = webhook_id or f"msg_{uuid.uuid4().hex}"
    return await client.post(
        connection.webhook_url,
        content=body,
        headers=signed_headers(connection.webhook_secret, webhook_id, body),
    )


async def create_demo_connection(
    database_url: str, master_key: str, ingest_url: str, account: DemoAccount
) -> tuple[uuid.UUID, NewConnection]:
    conn = await asyncpg.connect(database_url)
    try:
        user_id = await create_user(conn, f"demo+{uuid.uuid4().hex[:8]}@poscal.test")
        created = await create_connection(
            conn,
            CredentialVault(LocalKeyEncryptionKey.from_base64(master_key)),
            user_id=user_id,
            broker="mt5",
            connection_type="demo",
            account_number=str(account.login),
            server=account.server,
            account_label="MT5 demo",
            ingest_url=ingest_url,
        )
        return user_id, created
    finally:
        await conn.close()


@dataclass(frozen=True)
class JournalCounts:
    rows: int
    open: int
    closed: int
    balance: Decimal | None


async def journal_counts(conn: Connection, account_id: uuid.UUID) -> JournalCounts:
    row = await conn.fetchrow(
        "SELECT count(*) AS rows, count(*) FILTER (WHERE status = 'open') AS open,"
        " count(*) FILTER (WHERE status = 'closed') AS closed,"
        " (SELECT current_balance FROM trading_accounts WHERE id = $1) AS balance"
        " FROM trading_journal WHERE account_id = $1",
        account_id,
    )
    assert row is not None
    return JournalCounts(row["rows"], row["open"], row["closed"], row["balance"])


@dataclass(frozen=True)
class DemoRun:
    """What the demo made: its user (whom the dashboard link signs in as) and its journal."""

    user_id: uuid.UUID
    journal: JournalCounts


async def run_demo(
    database_url: str,
    master_key: str,
    ingest_url: str,
    positions: int = 24,
    say: Callable[[str], None] = print,
    pause_seconds: float = 0.15,
) -> DemoRun:
    account = demo_account()
    user_id, connection = await create_demo_connection(
        database_url, master_key, ingest_url, account
    )
    say(
        f"demo connection {connection.connection_id} (MT5 demo account {account.login})"
        f" of user {user_id}"
    )
    bodies = [encode_body(b) for b in demo_stream(account, positions)]
    conn = await asyncpg.connect(database_url)
    try:
        async with httpx.AsyncClient(timeout=10) as client:
            for sent, body in enumerate(bodies, start=1):
                (await send_signed(client, connection, body)).raise_for_status()
                if sent % 5 == 0 or sent == len(bodies):
                    counts = await journal_counts(conn, connection.account_id)
                    say(
                        f"sent {sent}/{len(bodies)} webhooks · journal rows {counts.rows}"
                        f" ({counts.open} open, {counts.closed} closed) · balance {counts.balance}"
                    )
                await asyncio.sleep(pause_seconds)
        await wait_for_events(conn, connection.connection_id, len(bodies))
        settled = await journal_counts(conn, connection.account_id)
        say(
            f"all {len(bodies)} webhooks written · journal rows {settled.rows}"
            f" ({settled.open} open, {settled.closed} closed) · balance {settled.balance}"
        )
        # Senders retry and re-send history: the same deals again under new ids change nothing.
        async with httpx.AsyncClient(timeout=10) as client:
            for body in bodies[-3:]:
                (await send_signed(client, connection, body)).raise_for_status()
        await wait_for_events(conn, connection.connection_id, len(bodies) + 3)
        counts = await journal_counts(conn, connection.account_id)
        verdict = "unchanged" if counts == settled else "CHANGED: this is a bug"
        say(f"re-sent the last 3 webhooks under new ids · journal {verdict}")
        return DemoRun(user_id, counts)
    finally:
        await conn.close()


async def wait_for_events(
    conn: Connection, connection_id: uuid.UUID, expected: int, wait_seconds: float = 30.0
) -> int:
    """Wait until the writer has recorded `expected` events of this connection."""
    deadline = time.monotonic() + wait_seconds
    while True:
        seen: int = await conn.fetchval(
            "SELECT count(*) FROM sync_events WHERE connection_id = $1", connection_id
        )
        if seen >= expected or time.monotonic() > deadline:
            return seen
        await asyncio.sleep(0.1)
