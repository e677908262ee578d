"""End to end: deals sent as the Expert Advisor builds and signs them (its .mqh source compiled
with g++) through the real ingest, normalizer and writer processes become the journal's rows;
the EA sending the same deals again is answered 409 and changes nothing."""

from __future__ import annotations

import time
from decimal import Decimal
from pathlib import Path

import asyncpg
import httpx
import pytest

from services.devstack.demo import wait_for_events
from services.devstack.stack import DevStack
from services.shared.vault import CredentialVault
from tests.support.builders import SERVER, TestConnection, fixture_deals, new_connection
from tests.support.mt5_ea import EaHarness, EaRequest, ea_harness

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def ea(tmp_path_factory: pytest.TempPathFactory) -> EaHarness:
    return ea_harness(Path(tmp_path_factory.getbasetemp()))


@pytest.fixture
async def connection(pool: asyncpg.Pool, vault: CredentialVault, stack: DevStack) -> TestConnection:
    async with pool.acquire() as conn:
        return await new_connection(conn, vault, ingest_url=stack.ingest_url)


def ea_batches(ea: EaHarness, connection: TestConnection, balance: float) -> list[EaRequest]:
    return ea.requests(
        secret=connection.created.webhook_secret,
        timestamp=int(time.time()),
        login=connection.login,
        server=SERVER,
        deals=fixture_deals(),
        balance=balance,
        equity=balance,
        batch_size=2,
    )


async def send(connection: TestConnection, request: EaRequest) -> int:
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.post(
            connection.created.webhook_url, content=request.body, headers=request.headers
        )
    return response.status_code


async def journal(pool: asyncpg.Pool, connection: TestConnection) -> list[tuple[object, ...]]:
    rows = await pool.fetch(
        "SELECT mt5_trade_id, side, status, volume, entry_price, exit_price, profit, commission,"
        " swap, opened_at, closed_at, fill_count FROM trading_journal WHERE connection_id = $1",
        connection.created.connection_id,
    )
    balance = await pool.fetchval(
        "SELECT current_balance FROM trading_accounts WHERE id = $1", connection.created.account_id
    )
    return [tuple(r) for r in rows] + [("balance", balance)]


async def test_deals_sent_by_the_ea_become_the_journal_row_and_a_resend_changes_nothing(
    ea: EaHarness, pool: asyncpg.Pool, connection: TestConnection
) -> None:
    batches = ea_batches(ea, connection, balance=1069.44)
    assert len(batches) == 2  # the three deals of one position, two to a webhook
    assert [await send(connection, b) for b in batches] == [202, 202]
    async with pool.acquire() as conn:
        assert await wait_for_events(conn, connection.created.connection_id, 2) == 2
    before = await journal(pool, connection)
    [row, balance] = before
    assert row[:9] == (
        f"mt5:{SERVER}:{connection.login}:800001",
        "buy",
        "closed",
        Decimal("0.30"),
        Decimal("1.085"),
        Decimal("1.0875"),
        Decimal("75.00"),
        Decimal("-4.20"),
        Decimal("-1.36"),
    )
    assert [str(row[9]), str(row[10])] == [
        "2024-06-03 06:00:00.123000+00:00",
        "2024-06-04 09:00:00.789000+00:00",
    ]
    assert row[11] == 3
    assert balance == ("balance", Decimal("1069.44"))

    # The terminal restarted and its outbox sent both batches again: same ids, 409, nothing new.
    resent = ea_batches(ea, connection, balance=1069.44)
    assert [r.webhook_id for r in resent] == [b.webhook_id for b in batches]
    assert [await send(connection, r) for r in resent] == [409, 409]
    assert await journal(pool, connection) == before
