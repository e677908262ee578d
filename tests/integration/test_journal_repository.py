"""The writer's transaction against the real database: replays and reorderings never change a
total, partial closes are right at every step, only newer snapshots move the balance."""

from __future__ import annotations

import asyncio
import itertools
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg
import pytest

from services.devstack.demo import encode_body
from services.normalizer.mappers.mt5 import map_event
from services.shared.canonical import CanonicalBatch
from services.shared.vault import CredentialVault
from services.writer.repository import JournalRepository
from tests.support.builders import (
    TestConnection,
    fixture_deals,
    mt5_body,
    new_connection,
    raw_event,
)

pytestmark = pytest.mark.integration
REPOSITORY = JournalRepository()


def batch(
    connection: TestConnection,
    deals: list[dict[str, Any]],
    *,
    balance: str = "1000.00",
    delivery: str | None = None,
    sent_at: datetime | None = None,
) -> CanonicalBatch:
    body = encode_body(mt5_body(connection.login, deals, balance=balance))
    return map_event(raw_event(connection, body, delivery, sent_at)).batch


async def journal(pool: asyncpg.Pool, connection: TestConnection) -> list[dict[str, Any]]:
    rows = await pool.fetch(
        "SELECT mt5_trade_id, user_id, account_id, connection_id, connection_type, broker,"
        " symbol, side, volume, closed_volume, entry_price, exit_price, opened_at, closed_at,"
        " profit, commission, swap, status, fill_count FROM trading_journal"
        " WHERE connection_id = $1 ORDER BY mt5_trade_id",
        connection.created.connection_id,
    )
    return [dict(r) for r in rows]


async def balance(pool: asyncpg.Pool, connection: TestConnection) -> Decimal:
    value: Decimal = await pool.fetchval(
        "SELECT current_balance FROM trading_accounts WHERE id = $1", connection.created.account_id
    )
    return value


@pytest.fixture
async def connection(pool: asyncpg.Pool, vault: CredentialVault) -> TestConnection:
    async with pool.acquire() as conn:
        return await new_connection(conn, vault)


async def test_the_fixture_position_becomes_one_closed_journal_row(
    pool: asyncpg.Pool, connection: TestConnection
) -> None:
    async with pool.acquire() as conn:
        [outcome] = await REPOSITORY.apply(conn, [batch(connection, fixture_deals())])
    assert (outcome.fills_inserted, outcome.positions_touched, outcome.first_time) == (3, 1, True)
    [row] = await journal(pool, connection)
    assert row == row | {
        "mt5_trade_id": f"mt5:PosCal-Test:{connection.login}:800001",
        "user_id": connection.user_id,
        "account_id": connection.created.account_id,
        "connection_id": connection.created.connection_id,
        "connection_type": "demo",
        "broker": "mt5",
        "symbol": "EURUSD",
        "side": "buy",
        "volume": Decimal("0.30"),
        "entry_price": Decimal("1.085"),
        "exit_price": Decimal("1.0875"),
        "profit": Decimal("75.00"),
        "commission": Decimal("-4.20"),
        "swap": Decimal("-1.36"),
        "status": "closed",
        "fill_count": 3,
        "opened_at": datetime(2024, 6, 3, 6, 0, 0, 123000, tzinfo=UTC),
        "closed_at": datetime(2024, 6, 4, 9, 0, 0, 789000, tzinfo=UTC),
    }


async def test_partial_closes_arriving_one_by_one_are_right_at_every_step(
    pool: asyncpg.Pool, connection: TestConnection
) -> None:
    steps = []
    async with pool.acquire() as conn:
        for deal in fixture_deals():
            await REPOSITORY.apply(conn, [batch(connection, [deal])])
            [row] = await journal(pool, connection)
            steps.append((row["status"], row["closed_volume"], row["profit"]))
    assert steps == [
        ("open", Decimal("0"), Decimal("0.0")),
        ("open", Decimal("0.10"), Decimal("15.00")),
        ("closed", Decimal("0.30"), Decimal("75.00")),
    ]


async def test_replays_and_resends_under_new_ids_change_nothing_and_count_syncs_once(
    pool: asyncpg.Pool, connection: TestConnection
) -> None:
    original = batch(connection, fixture_deals(), balance="1069.44")
    async with pool.acquire() as conn:
        await REPOSITORY.apply(conn, [original])
        before = (await journal(pool, connection), await balance(pool, connection))
        replayed = await REPOSITORY.apply(conn, [original, original])
        resent = await REPOSITORY.apply(
            conn, [batch(connection, fixture_deals(), balance="1069.44")]
        )
    assert (await journal(pool, connection), await balance(pool, connection)) == before
    assert [o.fills_inserted for o in replayed + resent] == [0, 0, 0]
    assert [o.first_time for o in replayed + resent] == [False, False, True]
    counts = await pool.fetchrow(
        "SELECT (SELECT count(*) FROM broker_fills WHERE connection_id = $1),"
        " (SELECT count(*) FROM sync_events WHERE connection_id = $1),"
        " (SELECT monthly_sync_count FROM mt5_security_audit WHERE connection_id = $1)",
        connection.created.connection_id,
    )
    assert counts is not None and tuple(counts) == (3, 2, 2)


async def test_every_delivery_order_converges_on_the_same_row(
    pool: asyncpg.Pool, vault: CredentialVault
) -> None:
    rows = []
    for order in itertools.permutations(range(3)):
        async with pool.acquire() as conn:
            connection = await new_connection(conn, vault)
            deals = fixture_deals()
            for index in order:
                await REPOSITORY.apply(conn, [batch(connection, [deals[index]])])
        [row] = await journal(pool, connection)
        rows.append({k: v for k, v in row.items() if "id" not in k})
    assert all(row == rows[0] for row in rows)
    assert rows[0]["status"] == "closed"


async def test_only_a_newer_snapshot_moves_the_balance(
    pool: asyncpg.Pool, connection: TestConnection
) -> None:
    now = datetime.now(UTC)
    async with pool.acquire() as conn:
        await REPOSITORY.apply(conn, [batch(connection, [], balance="200.00", sent_at=now)])
        late = await REPOSITORY.apply(
            conn, [batch(connection, [], balance="100.00", sent_at=now - timedelta(minutes=5))]
        )
        assert await balance(pool, connection) == Decimal("200.00")
        newer = await REPOSITORY.apply(
            conn, [batch(connection, [], balance="300.00", sent_at=now + timedelta(seconds=1))]
        )
    assert await balance(pool, connection) == Decimal("300.00")
    assert (late[0].balance_applied, newer[0].balance_applied) == (False, True)


async def test_within_one_batch_the_newest_snapshot_wins_whatever_its_position(
    pool: asyncpg.Pool, connection: TestConnection
) -> None:
    now = datetime.now(UTC)
    async with pool.acquire() as conn:
        await REPOSITORY.apply(
            conn,
            [
                batch(connection, [], balance="300.00", sent_at=now),
                batch(connection, [], balance="100.00", sent_at=now - timedelta(minutes=1)),
            ],
        )
    assert await balance(pool, connection) == Decimal("300.00")


async def test_concurrent_writers_with_overlapping_fills_agree(
    pool: asyncpg.Pool, connection: TestConnection
) -> None:
    deals = fixture_deals()

    async def apply(chosen: list[dict[str, Any]]) -> None:
        async with pool.acquire() as conn:
            await REPOSITORY.apply(conn, [batch(connection, chosen)])

    await asyncio.gather(apply(deals[:2]), apply(deals[1:]), apply(deals[::2]))
    [row] = await journal(pool, connection)
    assert (row["status"], row["fill_count"], row["profit"]) == ("closed", 3, Decimal("75.00"))
    assert (
        await pool.fetchval(
            "SELECT count(*) FROM broker_fills WHERE connection_id = $1",
            connection.created.connection_id,
        )
        == 3
    )


async def test_a_cash_movement_is_recorded_once_however_often_it_arrives(
    pool: asyncpg.Pool, connection: TestConnection
) -> None:
    deposit = fixture_deals()[0] | {
        "ticket": 77,
        "type": 2,
        "position_id": 0,
        "symbol": "",
        "volume": 0,
        "price": 0,
        "profit": Decimal("500.00"),
    }
    async with pool.acquire() as conn:
        for _ in range(3):
            await REPOSITORY.apply(conn, [batch(connection, [deposit])])
    rows = await pool.fetch(
        "SELECT kind, amount, currency FROM broker_cash_movements WHERE connection_id = $1",
        connection.created.connection_id,
    )
    assert [tuple(r) for r in rows] == [("balance", Decimal("500.00"), "USD")]
