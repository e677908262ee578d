"""Builders for test data: users, connections and their credentials, raw events, MT5 webhook
bodies."""

from __future__ import annotations

import itertools
import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import asyncpg

from services.shared.connection_admin.connections import (
    NewConnection,
    create_connection,
    create_user,
)
from services.shared.envelope import ConnectionRef, RawEvent
from services.shared.vault import CredentialVault

# Copies of ../shared/fixtures (the team's real broker samples), so a clone tests on its own;
# tests/unit/test_fixture_copies.py fails if the copies drift from ../shared where it exists.
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
SERVER = "PosCal-Test"
INGEST_URL = "http://127.0.0.1:8080"
_logins = itertools.count(70_000_000 + uuid.uuid4().int % 1_000_000 * 10)


def fixture_deals(name: str = "mt5/partial_close_constructed.json") -> list[dict[str, Any]]:
    """The deals of a shared fixture file, numbers as exact Decimals."""
    document = json.loads((FIXTURES / name).read_text(), parse_float=Decimal)
    deals: list[dict[str, Any]] = document["deals"]
    return deals


def mt5_body(
    login: int, deals: list[dict[str, Any]], balance: str = "1000.00", offset: int = 10800
) -> dict[str, Any]:
    return {
        "account": {
            "login": login,
            "server": SERVER,
            "currency": "USD",
            "balance": Decimal(balance),
            "equity": Decimal(balance),
        },
        "server_time_offset_seconds": offset,
        "deals": deals,
    }


@dataclass(frozen=True)
class TestConnection:
    __test__ = False  # a builder, not a test class

    user_id: uuid.UUID
    login: int
    created: NewConnection

    @property
    def webhook_path(self) -> str:
        """Where its webhooks go on any ingest: the path of its webhook URL."""
        return urlsplit(self.created.webhook_url).path

    @property
    def webhook_path_id(self) -> uuid.UUID:
        return uuid.UUID(self.webhook_path.rsplit("/", 1)[1])

    @property
    def ref(self) -> ConnectionRef:
        return ConnectionRef(
            connection_id=self.created.connection_id,
            user_id=self.user_id,
            account_id=self.created.account_id,
            broker="mt5",
            connection_type="demo",
            account_number=str(self.login),
            server=SERVER,
        )


async def new_connection(
    conn: asyncpg.Connection | asyncpg.pool.PoolConnectionProxy,
    vault: CredentialVault,
    ingest_url: str = INGEST_URL,
) -> TestConnection:
    """A new user with one MT5 demo connection to a new account."""
    user_id = await create_user(conn, f"trader-{uuid.uuid4().hex[:10]}@poscal.test")
    return await connect_account(conn, vault, user_id, next(_logins), ingest_url=ingest_url)


async def connect_account(
    conn: asyncpg.Connection | asyncpg.pool.PoolConnectionProxy,
    vault: CredentialVault,
    user_id: uuid.UUID,
    login: int,
    *,
    ingest_url: str = INGEST_URL,
) -> TestConnection:
    """The user's MT5 demo connection to account `login` on the test server."""
    created = await connect_broker_account(
        conn, vault, user_id, "mt5", str(login), server=SERVER, ingest_url=ingest_url
    )
    return TestConnection(user_id, login, created)


async def connect_broker_account(
    conn: asyncpg.Connection | asyncpg.pool.PoolConnectionProxy,
    vault: CredentialVault,
    user_id: uuid.UUID,
    broker: str,
    account_number: str,
    *,
    server: str = "",
    connection_type: Literal["demo", "live"] = "demo",
    account_label: str = "test account",
    ingest_url: str = INGEST_URL,
    api_url: str | None = None,
    poll_interval_seconds: int = 60,
) -> NewConnection:
    """The user's connection to account `account_number` at `broker`, as the operator creates
    it; what a spec does not name is the test default."""
    return await create_connection(
        conn,
        vault,
        user_id=user_id,
        broker=broker,
        connection_type=connection_type,
        account_number=account_number,
        server=server,
        account_label=account_label,
        ingest_url=ingest_url,
        api_url=api_url,
        poll_interval_seconds=poll_interval_seconds,
    )


async def store_credential(
    pool: asyncpg.Pool,
    vault: CredentialVault,
    connection: TestConnection,
    kind: str,
    plaintext: bytes,
    expires_at: datetime | None = None,
) -> uuid.UUID:
    """A credential of `kind` sealed in the vault for the connection (beside what it has)."""
    async with pool.acquire() as conn:
        return await vault.store(
            conn,
            user_id=connection.user_id,
            connection_id=connection.created.connection_id,
            kind=kind,
            plaintext=plaintext,
            expires_at=expires_at,
        )


# A connection as a mapper sees it, for pure tests with no database.
PINNED_LOGIN = 52557820
PINNED_CONNECTION = ConnectionRef(
    connection_id=uuid.UUID("0b6f3c52-5d0e-4f57-9a7e-3f1b1c2d4e5f"),
    user_id=uuid.UUID("1c7a4d63-6e1f-4a68-8b8f-4a2c2d3e5f60"),
    account_id=uuid.UUID("2d8b5e74-7f20-4b79-9c90-5b3d3e4f6071"),
    broker="mt5",
    connection_type="demo",
    account_number=str(PINNED_LOGIN),
    server=SERVER,
)


def raw_event(
    connection: TestConnection,
    body: bytes,
    delivery_id: str | None = None,
    sent_at: datetime | None = None,
) -> RawEvent:
    now = datetime.now(UTC)
    return RawEvent.wrap(
        source="webhook",
        connection=connection.ref,
        received_at=now,
        delivery_id=delivery_id or f"msg_{uuid.uuid4().hex}",
        body=body,
        sent_at=sent_at or now,
    )


def deposit_deal(ticket: int, amount: str = "500.00") -> dict[str, Any]:
    """An MT5 balance deal (DEAL_TYPE_BALANCE): money in, not a trade."""
    return fixture_deals()[0] | {
        "ticket": ticket,
        "order": 0,
        "type": 2,
        "entry": 0,
        "position_id": 0,
        "symbol": "",
        "volume": Decimal("0"),
        "price": Decimal("0"),
        "commission": Decimal("0"),
        "profit": Decimal(amount),
        "comment": "Deposit",
    }
