"""The writer's transaction against the real database: replays and reorderings never change a
total, partial closes are right at every step, only newer snapshots move the balance."""

from __future__ import annotations

import asyncio
import itertools
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg
import pytest

from services.devstack.demo import encode_body
from services.shared.brokers.mt5 import BROKER
from services.shared.canonical import CanonicalBatch
from services.shared.connection_admin.connections import create_user
from services.shared.envelope import RawEvent
from services.shared.vault import CredentialVault
from services.writer.repository import JournalRepository
from tests.support.builders import (
    SERVER,
    TestConnection,
    connect_account,
    deposit_deal,
    fixture_deals,
    mt5_body,
    raw_event,
)

map_event = BROKER.map  # every MT5 payload, by its kind

pytestmark = pytest.mark.integration
REPOSITORY = JournalRepository()

# The fixture's derived_closed_trade, as its journal row: times carry the deals' milliseconds.
CLOSED_FIXTURE_TRADE: dict[str, object] = {
    "symbol": "EURUSD",
    "side": "buy",
    "volume": Decimal("0.30"),
    "closed_volume": Decimal("0.30"),
    "entry_price": Decimal("1.085"),
    "exit_price": Decimal("1.0875"),
    "profit": Decimal("75.00"),
    "commission": Decimal("-4.20"),
    "swap": Decimal("-1.36"),
    "fees": Decimal("0"),
    "opened_at": datetime(2024, 6, 3, 6, 0, 0, 123000, tzinfo=UTC),
    "closed_at": datetime(2024, 6, 4, 9, 0, 0, 789000, tzinfo=UTC),
    "status": "closed",
    "fill_count": 3,
}
_JOURNAL_COLUMNS = (
    "mt5_trade_id, position_key, user_id, account_id, connection_id, connection_type, broker, "
    + ", ".join(CLOSED_FIXTURE_TRADE)
)


def batch(
    connection: TestConnection,
    deals: list[dict[str, Any]],
    *,
    balance: str = "1000.00",
    delivery: str | None = None,
    sent_at: datetime | None = None,
) -> CanonicalBatch:
    """What the normalizer makes of one webhook carrying these deals."""
    body = encode_body(mt5_body(connection.login, deals, balance=balance))
    return map_event(raw_event(connection, body, delivery, sent_at)).batch


def position_key(connection: TestConnection, position_id: int = 800001) -> str:
    return f"mt5:{SERVER}:{connection.login}:{position_id}"


async def journal(pool: asyncpg.Pool, connection: TestConnection) -> list[dict[str, Any]]:
    rows = await pool.fetch(
        f"SELECT {_JOURNAL_COLUMNS} FROM trading_journal"  # noqa: S608 - constant column list
        " WHERE connection_id = $1 ORDER BY mt5_trade_id",
        connection.created.connection_id,
    )
    return [dict(r) for r in rows]


def numbers(row: dict[str, Any]) -> dict[str, Any]:
    """The row's trade, without who owns it."""
    return {column: row[column] for column in CLOSED_FIXTURE_TRADE}


async def balance(pool: asyncpg.Pool, connection: TestConnection) -> Decimal:
    value: Decimal = await pool.fetchval(
        "SELECT current_balance FROM trading_accounts WHERE id = $1", connection.created.account_id
    )
    return value


async def fill_count(pool: asyncpg.Pool, connection: TestConnection) -> int:
    count: int = await pool.fetchval(
        "SELECT count(*) FROM broker_fills WHERE connection_id = $1",
        connection.created.connection_id,
    )
    return count


async def test_the_fixture_position_becomes_one_closed_journal_row_owned_by_its_connection(
    pool: asyncpg.Pool, connection: TestConnection
) -> None:
    async with pool.acquire() as conn:
        [outcome] = await REPOSITORY.apply(conn, [batch(connection, fixture_deals())])

    assert (outcome.fills_inserted, outcome.positions_touched, outcome.first_time) == (3, 1, True)
    [row] = await journal(pool, connection)
    assert numbers(row) == CLOSED_FIXTURE_TRADE
    assert {k: v for k, v in row.items() if k not in CLOSED_FIXTURE_TRADE} == {
        "mt5_trade_id": position_key(connection),
        "position_key": position_key(connection),
        "user_id": connection.user_id,
        "account_id": connection.created.account_id,
        "connection_id": connection.created.connection_id,
        "connection_type": "demo",
        "broker": "mt5",
    }


async def test_partial_closes_arriving_one_by_one_are_right_at_every_step(
    pool: asyncpg.Pool, connection: TestConnection
) -> None:
    steps = []
    async with pool.acquire() as conn:
        for deal in fixture_deals():
            await REPOSITORY.apply(conn, [batch(connection, [deal])])
            [row] = await journal(pool, connection)
            steps.append(numbers(row))

    opened = {"status": "open", "closed_at": None}
    assert steps == [
        CLOSED_FIXTURE_TRADE
        | opened
        | {
            "closed_volume": Decimal("0"),
            "exit_price": None,
            "profit": Decimal("0"),
            "commission": Decimal("-2.10"),
            "swap": Decimal("0"),
            "fill_count": 1,
        },
        CLOSED_FIXTURE_TRADE
        | opened
        | {
            "closed_volume": Decimal("0.10"),
            "exit_price": Decimal("1.0865"),
            "profit": Decimal("15.00"),
            "commission": Decimal("-2.80"),
            "swap": Decimal("0"),
            "fill_count": 2,
        },
        CLOSED_FIXTURE_TRADE,
    ]


async def test_replays_and_resends_under_a_new_delivery_change_nothing_and_count_each_event_once(
    pool: asyncpg.Pool, connection: TestConnection
) -> None:
    original = batch(connection, fixture_deals(), balance="1069.44")
    resend = batch(connection, fixture_deals(), balance="1069.44", delivery="msg_resent")
    async with pool.acquire() as conn:
        await REPOSITORY.apply(conn, [original])
        before = (
            await journal(pool, connection),
            await fill_count(pool, connection),
            await balance(pool, connection),
        )
        replays = [
            *await REPOSITORY.apply(conn, [original]),
            *await REPOSITORY.apply(conn, [original, original]),
            *await REPOSITORY.apply(conn, [resend]),
            *await REPOSITORY.apply(conn, [resend]),
        ]

    after = (
        await journal(pool, connection),
        await fill_count(pool, connection),
        await balance(pool, connection),
    )
    assert after == before
    assert before[1:] == (3, Decimal("1069.44"))
    assert [o.fills_inserted for o in replays] == [0, 0, 0, 0, 0]
    assert [o.first_time for o in replays] == [False, False, False, True, False]
    events = await pool.fetch(
        "SELECT event_id, fills_received, fills_inserted FROM sync_events WHERE connection_id = $1",
        connection.created.connection_id,
    )
    assert {r["event_id"]: (r["fills_received"], r["fills_inserted"]) for r in events} == {
        original.event_id: (3, 3),
        resend.event_id: (3, 0),
    }
    assert (
        await pool.fetchval(
            "SELECT monthly_sync_count FROM mt5_security_audit WHERE connection_id = $1",
            connection.created.connection_id,
        )
        == 2
    )


@pytest.mark.parametrize(
    "order",
    list(itertools.permutations(range(3))),
    ids=lambda order: "-".join(("in", "out1", "out2")[i] for i in order),
)
async def test_every_delivery_order_converges_on_the_in_order_row(
    pool: asyncpg.Pool, connection: TestConnection, order: tuple[int, ...]
) -> None:
    deals = fixture_deals()
    async with pool.acquire() as conn:
        for index in order:
            await REPOSITORY.apply(conn, [batch(connection, [deals[index]])])

    [row] = await journal(pool, connection)
    assert numbers(row) == CLOSED_FIXTURE_TRADE
    assert await fill_count(pool, connection) == 3


async def test_an_applied_report_stores_its_balance_equity_and_currency_each_as_reported(
    pool: asyncpg.Pool, connection: TestConnection
) -> None:
    body = mt5_body(connection.login, [])
    body["account"] |= {
        "balance": Decimal("1000.00"),
        "equity": Decimal("987.65"),
        "currency": "EUR",
    }
    sent_at = datetime.now(UTC) - timedelta(minutes=1)
    report = map_event(raw_event(connection, encode_body(body), sent_at=sent_at)).batch
    async with pool.acquire() as conn:
        [outcome] = await REPOSITORY.apply(conn, [report])

    account = await pool.fetchrow(
        "SELECT current_balance, equity, currency, balance_as_of, balance_received_at"
        " FROM trading_accounts WHERE id = $1",
        connection.created.account_id,
    )
    assert outcome.balance_applied
    assert account is not None and dict(account) == {
        "current_balance": Decimal("1000.00"),
        "equity": Decimal("987.65"),
        "currency": "EUR",
        "balance_as_of": sent_at,
        "balance_received_at": report.received_at,
    }


async def test_only_a_newer_snapshot_moves_the_balance(
    pool: asyncpg.Pool, connection: TestConnection
) -> None:
    now = datetime.now(UTC)
    async with pool.acquire() as conn:
        await REPOSITORY.apply(conn, [batch(connection, [], balance="200.00", sent_at=now)])
        [late] = await REPOSITORY.apply(
            conn, [batch(connection, [], balance="100.00", sent_at=now - timedelta(minutes=5))]
        )
        after_late = await balance(pool, connection)
        [newer] = await REPOSITORY.apply(
            conn, [batch(connection, [], balance="300.00", sent_at=now + timedelta(seconds=1))]
        )

    assert (after_late, late.balance_applied) == (Decimal("200.00"), False)
    assert (await balance(pool, connection), newer.balance_applied) == (Decimal("300.00"), True)


async def test_within_one_call_the_newest_snapshot_wins_whatever_its_position(
    pool: asyncpg.Pool, connection: TestConnection
) -> None:
    now = datetime.now(UTC)
    async with pool.acquire() as conn:
        outcomes = await REPOSITORY.apply(
            conn,
            [
                batch(connection, [], balance="300.00", sent_at=now),
                batch(connection, [], balance="100.00", sent_at=now - timedelta(minutes=1)),
            ],
        )

    assert await balance(pool, connection) == Decimal("300.00")
    assert [o.balance_applied for o in outcomes] == [True, False]


@pytest.mark.parametrize("together", [False, True], ids=["later", "in-one-call"])
async def test_an_old_report_re_sent_under_a_new_id_does_not_roll_the_balance_back(
    pool: asyncpg.Pool, connection: TestConnection, together: bool
) -> None:
    deals = fixture_deals()
    now = datetime.now(UTC)
    first = batch(connection, deals[:2], balance="1015.00", sent_at=now - timedelta(hours=1))
    second = batch(connection, deals, balance="1072.00", sent_at=now - timedelta(minutes=1))
    # The sender re-signs the first report: a new webhook id, a fresh timestamp, the old balance.
    first_again = batch(connection, deals[:2], balance="1015.00", sent_at=now)
    async with pool.acquire() as conn:
        if together:
            await REPOSITORY.apply(conn, [first, second, first_again])
        else:
            for report in (first, second, first_again):
                await REPOSITORY.apply(conn, [report])

    assert await balance(pool, connection) == Decimal("1072.00")


async def test_a_newer_report_without_deals_moves_the_balance_after_one_with_deals(
    pool: asyncpg.Pool, connection: TestConnection
) -> None:
    now = datetime.now(UTC)
    async with pool.acquire() as conn:
        await REPOSITORY.apply(
            conn, [batch(connection, fixture_deals(), balance="1069.44", sent_at=now)]
        )
        [heartbeat] = await REPOSITORY.apply(
            conn, [batch(connection, [], balance="1069.44", sent_at=now + timedelta(seconds=30))]
        )

    assert heartbeat.balance_applied


def cancelled(deal: dict[str, Any]) -> dict[str, Any]:
    """The deal as MT5 re-reports it once the broker cancels it (DEAL_TYPE_*_CANCELED)."""
    return deal | {"type": 13 + deal["type"], "profit": Decimal("0.00")}


@pytest.mark.parametrize("order", ["cancel-after", "cancel-first"])
async def test_a_cancelled_deal_no_longer_counts_in_its_position(
    pool: asyncpg.Pool, connection: TestConnection, order: str
) -> None:
    deals = fixture_deals()
    cancel = batch(connection, [cancelled(deals[1])])
    async with pool.acquire() as conn:
        if order == "cancel-first":
            await REPOSITORY.apply(conn, [cancel])
        await REPOSITORY.apply(conn, [batch(connection, deals)])
        if order == "cancel-after":
            await REPOSITORY.apply(conn, [cancel])
        [replayed] = await REPOSITORY.apply(conn, [cancel])

    [row] = await journal(pool, connection)
    assert (row["closed_volume"], row["profit"], row["status"], row["fill_count"]) == (
        Decimal("0.20"),
        Decimal("60.00"),
        "open",
        2,
    )
    assert (replayed.fills_inserted, replayed.positions_touched) == (0, 0)


async def test_a_position_whose_every_deal_is_cancelled_leaves_the_journal(
    pool: asyncpg.Pool, connection: TestConnection
) -> None:
    [opening] = fixture_deals()[:1]
    async with pool.acquire() as conn:
        await REPOSITORY.apply(conn, [batch(connection, [opening])])
        await REPOSITORY.apply(conn, [batch(connection, [cancelled(opening)])])

    assert await journal(pool, connection) == []
    assert await fill_count(pool, connection) == 1  # kept, as the broker's record


async def reconnect(
    pool: asyncpg.Pool, vault: CredentialVault, old: TestConnection, user_id: uuid.UUID
) -> TestConnection:
    """The old connection deleted, the same broker account connected again by `user_id`."""
    async with pool.acquire() as conn:
        await conn.execute("DELETE FROM mt5_connections WHERE id = $1", old.created.connection_id)
        return await connect_account(conn, vault, user_id, old.login)


async def test_a_reconnected_account_takes_its_journal_rows_back(
    pool: asyncpg.Pool, vault: CredentialVault, connection: TestConnection
) -> None:
    async with pool.acquire() as conn:
        await REPOSITORY.apply(conn, [batch(connection, fixture_deals())])
    again = await reconnect(pool, vault, connection, connection.user_id)
    async with pool.acquire() as conn:
        await REPOSITORY.apply(conn, [batch(again, fixture_deals())])

    [row] = await journal(pool, again)
    assert (row["connection_id"], row["account_id"]) == (
        again.created.connection_id,
        again.created.account_id,
    )
    assert numbers(row) == CLOSED_FIXTURE_TRADE


async def test_another_users_history_of_an_account_is_left_alone_when_it_is_reconnected(
    pool: asyncpg.Pool, vault: CredentialVault, connection: TestConnection
) -> None:
    deals = fixture_deals()
    async with pool.acquire() as conn:
        await REPOSITORY.apply(conn, [batch(connection, deals[:2])])
        newcomer = await create_user(conn, f"next-{uuid.uuid4().hex[:10]}@poscal.test")
    kept = await pool.fetch("SELECT * FROM trading_journal WHERE user_id = $1", connection.user_id)
    again = await reconnect(pool, vault, connection, newcomer)
    async with pool.acquire() as conn:
        await REPOSITORY.apply(conn, [batch(again, deals)])

    after = await pool.fetch("SELECT * FROM trading_journal WHERE user_id = $1", connection.user_id)
    assert [{**r, "connection_id": None} for r in map(dict, kept)] == [dict(r) for r in after]


async def _wait_until_waiting_on_locks(pool: asyncpg.Pool, pids: list[int]) -> None:
    for _ in range(1000):
        waiting = await pool.fetchval(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE pid = ANY($1::int[]) AND wait_event_type = 'Lock'",
            pids,
        )
        if waiting == len(pids):
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"backends {pids} never both waited on a lock")


@pytest.mark.parametrize(
    ("first", "second"),
    [((0, 1), (1, 2)), ((0, 1), (2,)), ((0, 1, 2), (0, 1, 2))],
    ids=["overlapping", "disjoint", "identical"],
)
async def test_two_writers_of_one_position_in_flight_together_agree_on_one_row(
    pool: asyncpg.Pool, connection: TestConnection, first: tuple[int, ...], second: tuple[int, ...]
) -> None:
    deals = fixture_deals()
    batches = [batch(connection, [deals[i] for i in chosen]) for chosen in (first, second)]
    async with pool.acquire() as a, pool.acquire() as b, pool.acquire() as gate:
        # Holding the account row keeps whichever writer gets furthest from committing until
        # the other one is in flight too, so the two transactions surely overlap.
        held = gate.transaction()
        await held.start()
        await gate.execute(
            "SELECT 1 FROM trading_accounts WHERE id = $1 FOR UPDATE", connection.created.account_id
        )
        writers = asyncio.gather(
            REPOSITORY.apply(a, [batches[0]]), REPOSITORY.apply(b, [batches[1]])
        )
        try:
            await _wait_until_waiting_on_locks(pool, [a.get_server_pid(), b.get_server_pid()])
        finally:
            await held.commit()
        outcomes = [o for outcome in await writers for o in outcome]

    [row] = await journal(pool, connection)
    assert numbers(row) == CLOSED_FIXTURE_TRADE
    assert await fill_count(pool, connection) == 3
    assert sum(o.fills_inserted for o in outcomes) == 3


async def test_a_cash_movement_is_recorded_once_however_often_it_arrives(
    pool: asyncpg.Pool, connection: TestConnection
) -> None:
    deposit = deposit_deal(900000, amount="500.00")
    first = batch(connection, [deposit])
    async with pool.acquire() as conn:
        outcomes = [
            *await REPOSITORY.apply(conn, [first]),
            *await REPOSITORY.apply(conn, [first]),
            *await REPOSITORY.apply(conn, [batch(connection, [deposit], delivery="msg_again")]),
        ]

    rows = await pool.fetch(
        "SELECT movement_key, kind, amount, currency, executed_at, comment"
        " FROM broker_cash_movements WHERE connection_id = $1",
        connection.created.connection_id,
    )
    assert [tuple(r) for r in rows] == [
        (
            f"mt5:{SERVER}:{connection.login}:deal:900000",
            "balance",
            Decimal("500.00"),
            "USD",
            datetime(2024, 6, 3, 6, 0, 0, 123000, tzinfo=UTC),
            "Deposit",
        )
    ]
    assert [o.cash_inserted for o in outcomes] == [1, 0, 0]
    assert await journal(pool, connection) == []


def _event_received_at(connection: TestConnection, received_at: datetime) -> CanonicalBatch:
    body = encode_body(mt5_body(connection.login, []))
    event = RawEvent.wrap(
        source="webhook",
        connection=connection.ref,
        received_at=received_at,
        delivery_id=f"msg_{uuid.uuid4().hex}",
        body=body,
    )
    return map_event(event).batch


async def test_a_late_event_from_last_month_leaves_this_months_sync_count_alone(
    pool: asyncpg.Pool, connection: TestConnection
) -> None:
    now = datetime.now(UTC)
    async with pool.acquire() as conn:
        await REPOSITORY.apply(conn, [_event_received_at(connection, now)])
        await REPOSITORY.apply(conn, [_event_received_at(connection, now)])
        await REPOSITORY.apply(conn, [_event_received_at(connection, now - timedelta(days=40))])

    audit = await pool.fetchrow(
        "SELECT monthly_sync_count, sync_month FROM mt5_security_audit WHERE connection_id = $1",
        connection.created.connection_id,
    )
    assert audit is not None
    assert (audit["monthly_sync_count"], audit["sync_month"]) == (2, now.date().replace(day=1))


async def folded_through(pool: asyncpg.Pool, connection: TestConnection) -> str | None:
    """The key of the last fill the position's stored fold has taken in."""
    last: str | None = await pool.fetchval(
        "SELECT fold -> 'last' ->> 2 FROM position_folds"
        " WHERE connection_id = $1 AND position_key = $2",
        connection.created.connection_id,
        position_key(connection),
    )
    return last


@pytest.mark.parametrize("order", [(0, 1, 2), (2, 0, 1)], ids=["in-order", "close-first"])
async def test_a_positions_fold_is_stored_through_its_latest_deal_whatever_the_arrival_order(
    pool: asyncpg.Pool, connection: TestConnection, order: tuple[int, ...]
) -> None:
    deals = fixture_deals()
    latest = f"mt5:{SERVER}:{connection.login}:deal:{deals[2]['ticket']}"
    async with pool.acquire() as conn:
        for step, index in enumerate(order, start=1):
            await REPOSITORY.apply(conn, [batch(connection, [deals[index]])])
            seen = [deals[i] for i in order[:step]]
            newest = max(seen, key=lambda d: (d["time_msc"], d["ticket"]))
            assert await folded_through(pool, connection) == (
                f"mt5:{SERVER}:{connection.login}:deal:{newest['ticket']}"
            )

    assert await folded_through(pool, connection) == latest
    [row] = await journal(pool, connection)
    assert numbers(row) == CLOSED_FIXTURE_TRADE


async def test_a_cancelled_deal_folds_its_position_again_from_the_deals_still_counting(
    pool: asyncpg.Pool, connection: TestConnection
) -> None:
    deals = fixture_deals()
    async with pool.acquire() as conn:
        await REPOSITORY.apply(conn, [batch(connection, deals)])
        await REPOSITORY.apply(conn, [batch(connection, [cancelled(deals[2])])])
        # Folded again through the deals still counting, then extended by the same deal re-sent
        # uncancelled (a replay: nothing new, the fold stays).
        assert await folded_through(pool, connection) == (
            f"mt5:{SERVER}:{connection.login}:deal:{deals[1]['ticket']}"
        )
        await REPOSITORY.apply(conn, [batch(connection, [deals[2]])])

    [row] = await journal(pool, connection)
    assert (row["closed_volume"], row["status"], row["fill_count"]) == (Decimal("0.10"), "open", 2)


async def test_a_position_stored_without_its_fold_is_folded_again_from_every_deal(
    pool: asyncpg.Pool, connection: TestConnection
) -> None:
    # A position the writer has no fold of (written before folds were kept, say): its next
    # deal is not taken for the first of a new position.
    deals = fixture_deals()
    async with pool.acquire() as conn:
        await REPOSITORY.apply(conn, [batch(connection, deals[:2])])
        await conn.execute(
            "DELETE FROM position_folds WHERE connection_id = $1", connection.created.connection_id
        )
        await REPOSITORY.apply(conn, [batch(connection, deals[2:])])

    [row] = await journal(pool, connection)
    assert numbers(row) == CLOSED_FIXTURE_TRADE
    assert await folded_through(pool, connection) == (
        f"mt5:{SERVER}:{connection.login}:deal:{deals[2]['ticket']}"
    )
