"""The daily rollup the writer keeps, against the real database: whatever order the events
come in, replayed or late, the rows are those computed from scratch from the journal."""

from __future__ import annotations

import itertools
import random
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import asyncpg
import pytest

from services.devstack.demo import encode_body
from services.shared.analytics.days import DaySummary
from services.shared.analytics.rollup import fill_zone, journal_days, keep_portfolios, read_days
from services.shared.analytics.rollup_reading import read_totals
from services.shared.analytics.totals import totals_of_days
from services.shared.brokers.mt5 import BROKER
from services.shared.canonical import CanonicalBatch
from services.shared.vault import CredentialVault
from services.writer.repository import JournalRepository
from tests.support.builders import (
    TestConnection,
    connect_account,
    deposit_deal,
    fixture_deals,
    mt5_body,
    raw_event,
)

pytestmark = pytest.mark.integration
REPOSITORY = JournalRepository()
ZONES = ("UTC", "Europe/Berlin", "America/New_York")
_OFFSET = 10800  # the server's clock, UTC+3, as the webhook says


def server_time(when: str) -> dict[str, int]:
    """A deal's `time` and `time_msc` for a UTC instant, on the server's clock."""
    server = int(datetime.fromisoformat(when).replace(tzinfo=UTC).timestamp()) + _OFFSET
    return {"time": server, "time_msc": server * 1000}


def deal(
    ticket: int, position: int, when: str, *, entry: int, side: int, volume: str, profit: str
) -> dict[str, Any]:
    return (
        fixture_deals()[0]
        | server_time(when)
        | {
            "ticket": ticket,
            "order": ticket,
            "type": side,
            "entry": entry,
            "position_id": position,
            "volume": Decimal(volume),
            "price": Decimal("1.1"),
            "commission": Decimal("-0.50"),
            "swap": Decimal("0"),
            "profit": Decimal(profit),
        }
    )


def trade(position: int, opened: str, closed: str, profit: str) -> list[dict[str, Any]]:
    return [
        deal(position * 10, position, opened, entry=0, side=0, volume="0.10", profit="0"),
        deal(position * 10 + 1, position, closed, entry=1, side=1, volume="0.10", profit=profit),
    ]


def history() -> list[dict[str, Any]]:
    """Deals over a week: a deposit, wins and losses, one closing at 23:30 UTC, a breakeven, a
    position closed in two parts on different days (the second part the late deal), and a
    withdrawal."""
    deposit = deposit_deal(1, "1000.00") | server_time("2026-03-02T00:00:00")
    withdrawal = deposit_deal(2, "-200.00") | server_time("2026-03-05T08:00:00")
    split = [
        deal(70, 7, "2026-03-03T10:00:00", entry=0, side=0, volume="0.20", profit="0"),
        deal(71, 7, "2026-03-03T12:00:00", entry=1, side=1, volume="0.10", profit="12"),
        deal(72, 7, "2026-03-05T23:45:00", entry=1, side=1, volume="0.10", profit="-30"),
    ]
    return [
        deposit,
        *trade(1, "2026-03-02T09:00:00", "2026-03-02T09:00:30", "25"),
        *trade(2, "2026-03-02T20:00:00", "2026-03-02T23:30:00", "-40"),
        *trade(3, "2026-03-03T08:00:00", "2026-03-03T08:04:00", "1.00"),  # net of commission: 0
        *trade(4, "2026-03-03T22:00:00", "2026-03-04T01:00:00", "60"),
        *split,
        *trade(5, "2026-03-06T13:00:00", "2026-03-08T13:00:00", "-15"),
        withdrawal,
    ]


def batch(connection: TestConnection, deals: list[dict[str, Any]]) -> CanonicalBatch:
    body = encode_body(mt5_body(connection.login, deals))
    return BROKER.map(raw_event(connection, body)).batch


async def rollup(pool: asyncpg.Pool, connection: TestConnection, zone: str) -> list[DaySummary]:
    async with pool.acquire() as conn:
        days = await read_days(conn, [connection.created.account_id], zone)
    return sorted(days, key=lambda d: d.day)


async def from_scratch(
    pool: asyncpg.Pool, connection: TestConnection, zone: str
) -> list[DaySummary]:
    """The zone's rows computed again from the journal alone."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(
            "DELETE FROM analytics_time_zones WHERE user_id = $1 AND time_zone = $2",
            connection.user_id,
            zone,
        )
        assert await fill_zone(conn, connection.user_id, zone)
    return await rollup(pool, connection, zone)


async def keep_zones(pool: asyncpg.Pool, connection: TestConnection) -> None:
    async with pool.acquire() as conn:
        for zone in ZONES:
            async with conn.transaction():
                assert await fill_zone(conn, connection.user_id, zone)


async def deliver(pool: asyncpg.Pool, batches: list[CanonicalBatch]) -> None:
    async with pool.acquire() as conn:
        for b in batches:
            await REPOSITORY.apply(conn, [b])


def orders() -> list[list[int]]:
    """Each deal alone, in close order, reversed, and shuffled; each with replays."""
    n = len(history())
    shuffled = [random.Random(seed).sample(range(n), n) for seed in (1, 2, 3)]
    return [list(range(n)), list(reversed(range(n))), *shuffled]


@pytest.mark.parametrize(
    "order", orders(), ids=["in_order", "reversed", "shuffle1", "shuffle2", "shuffle3"]
)
async def test_any_order_with_replays_gives_the_rollup_computed_from_scratch(
    pool: asyncpg.Pool, connection: TestConnection, order: list[int]
) -> None:
    await keep_zones(pool, connection)
    deals = history()
    singles = [batch(connection, [deals[i]]) for i in order]
    replays = [batch(connection, [deals[i]]) for i in order[::2]]

    await deliver(pool, singles + replays)

    for zone in ZONES:
        kept = await rollup(pool, connection, zone)
        assert kept, zone
        assert kept == await from_scratch(pool, connection, zone), zone


async def test_the_rollup_holds_the_hand_worked_days_in_each_zone(
    pool: asyncpg.Pool, connection: TestConnection
) -> None:
    await keep_zones(pool, connection)
    await deliver(pool, [batch(connection, history())])

    utc = {d.day.isoformat(): d for d in await rollup(pool, connection, "UTC")}
    berlin = {d.day.isoformat(): d for d in await rollup(pool, connection, "Europe/Berlin")}
    # The 23:30 UTC loss is 2 March in UTC and 3 March in Berlin.
    assert (utc["2026-03-02"].trades, utc["2026-03-02"].losses) == (2, 1)
    assert utc["2026-03-02"].flows == Decimal("1000.00")
    assert (berlin["2026-03-02"].trades, berlin["2026-03-03"].losses) == (1, 1)
    # P&L is profit + commission (-0.50 on each deal): 25 - 1.00.
    assert utc["2026-03-02"].gross_profit == Decimal("24.00")
    # The split position is one trade, closed by its last part (23:45 UTC on 5 March).
    assert utc["2026-03-05"].trades == 1
    assert utc["2026-03-05"].gross_loss == Decimal("-19.50")
    assert berlin["2026-03-06"].trades == 1
    assert utc["2026-03-03"].trades == 1  # the breakeven
    assert (utc["2026-03-03"].wins, utc["2026-03-03"].losses) == (0, 0)


async def test_a_late_deal_moves_its_trade_to_the_day_it_now_closes(
    pool: asyncpg.Pool, connection: TestConnection
) -> None:
    await keep_zones(pool, connection)
    deals = history()
    late = next(d for d in deals if d["ticket"] == 72)
    await deliver(pool, [batch(connection, [d for d in deals if d is not late])])
    before = {d.day.isoformat(): d.trades for d in await rollup(pool, connection, "UTC")}

    await deliver(pool, [batch(connection, [late])])

    after = {d.day.isoformat(): d.trades for d in await rollup(pool, connection, "UTC")}
    # Half closed, the position was no trade yet; its last part closes it on 5 March.
    assert (before.get("2026-03-05", 0), after["2026-03-05"]) == (0, 1)
    assert before["2026-03-03"] == after["2026-03-03"] == 1
    assert await rollup(pool, connection, "UTC") == await from_scratch(pool, connection, "UTC")


async def test_a_closed_trade_closed_again_later_leaves_the_day_it_had_closed_on(
    pool: asyncpg.Pool, connection: TestConnection
) -> None:
    # Closed on 2 March, then a later close of the same position (in order, so folded into it)
    # moves the trade to 4 March: 2 March keeps no trade.
    await keep_zones(pool, connection)
    opened, closed = trade(9, "2026-03-02T10:00:00", "2026-03-02T12:00:00", "10")
    again = deal(92, 9, "2026-03-04T09:00:00", entry=1, side=1, volume="0.05", profit="5")
    await deliver(pool, [batch(connection, [opened, closed])])
    before = {d.day.isoformat(): d.trades for d in await rollup(pool, connection, "UTC")}

    await deliver(pool, [batch(connection, [again])])

    after = {d.day.isoformat(): d.trades for d in await rollup(pool, connection, "UTC")}
    assert (before, after) == ({"2026-03-02": 1}, {"2026-03-04": 1})
    assert await rollup(pool, connection, "UTC") == await from_scratch(pool, connection, "UTC")


async def test_a_zone_nobody_asked_for_is_not_kept(
    pool: asyncpg.Pool, connection: TestConnection
) -> None:
    await deliver(pool, [batch(connection, history())])

    assert await rollup(pool, connection, "UTC") == []
    async with pool.acquire() as conn, conn.transaction():
        assert await fill_zone(conn, connection.user_id, "UTC")
        assert not await fill_zone(conn, connection.user_id, "UTC")
    assert len(await rollup(pool, connection, "UTC")) == 5  # 2, 3, 4, 5 and 8 March


async def test_every_pair_of_halves_in_both_orders_converges(
    pool: asyncpg.Pool, connection: TestConnection
) -> None:
    await keep_zones(pool, connection)
    deals = history()
    halves = [deals[: len(deals) // 2], deals[len(deals) // 2 :]]
    for first, second in itertools.permutations(halves):
        await deliver(pool, [batch(connection, second), batch(connection, first)])

    assert await rollup(pool, connection, "Europe/Berlin") == await from_scratch(
        pool, connection, "Europe/Berlin"
    )


def other_history() -> list[dict[str, Any]]:
    """A second account's deals in the same week, closing between the first account's trades
    (and once at the same instant as one of them), so streaks across both accounts follow the
    close times of both."""
    return [
        deposit_deal(3, "500.00") | server_time("2026-03-02T00:00:00"),
        *trade(11, "2026-03-02T09:00:00", "2026-03-02T09:00:10", "-5"),
        *trade(12, "2026-03-02T21:00:00", "2026-03-02T23:30:00", "7"),  # with position 2's
        *trade(13, "2026-03-03T09:00:00", "2026-03-03T11:00:00", "-3"),
        *trade(14, "2026-03-05T10:00:00", "2026-03-05T23:50:00", "-8"),
        *trade(15, "2026-03-06T09:00:00", "2026-03-06T09:30:00", "4"),
    ]


async def portfolio_days(pool: asyncpg.Pool, group: list[Any], zone: str) -> list[Any]:
    return [
        tuple(r)
        for r in await pool.fetch(
            "SELECT r.day, r.first_run, r.last_run, r.longest_win, r.longest_loss"
            " FROM analytics_portfolio_daily AS r JOIN analytics_portfolios AS p"
            " ON p.id = r.portfolio_id WHERE p.accounts = $1 AND p.time_zone = $2"
            " ORDER BY r.day",
            sorted(group),
            zone,
        )
    ]


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
async def test_a_portfolios_days_and_totals_equal_the_journals_in_any_order_with_replays(
    pool: asyncpg.Pool, vault: CredentialVault, connection: TestConnection, seed: int
) -> None:
    async with pool.acquire() as conn:
        second = await connect_account(conn, vault, connection.user_id, connection.login + 500_000)
    group = [connection.created.account_id, second.created.account_id]
    await keep_zones(pool, connection)
    async with pool.acquire() as conn:
        for zone in ZONES:
            async with conn.transaction():
                assert await keep_portfolios(conn, connection.user_id, zone, [group]) == 1
    deals = [(connection, d) for d in history()] + [(second, d) for d in other_history()]
    rng = random.Random(seed)
    order = rng.sample(deals, len(deals))
    replays = order[:: 1 + seed % 3]

    await deliver(pool, [batch(owner, [d]) for owner, d in order + replays])

    for zone in ZONES:
        kept = await portfolio_days(pool, group, zone)
        async with pool.acquire() as conn:
            # The same portfolio filled from its accounts' rows (the specs above hold those to
            # the journal's).
            async with conn.transaction():
                await conn.execute(
                    "DELETE FROM analytics_portfolios WHERE accounts = $1 AND time_zone = $2",
                    sorted(group),
                    zone,
                )
                assert await keep_portfolios(conn, connection.user_id, zone, [group]) == 1
            assert kept and kept == await portfolio_days(pool, group, zone), zone
            recomputed = await journal_days(conn, group, zone)
            for first, last in ((None, None), (date(2026, 3, 3), date(2026, 3, 5))):
                read = await read_totals(conn, group, zone, {}, [frozenset(group)], first, last)
                expected = totals_of_days(group, recomputed, {}, [frozenset(group)], first, last)
                assert read == expected, (zone, first)


async def test_a_group_kept_as_no_portfolio_has_the_streaks_of_its_accounts_merged(
    pool: asyncpg.Pool, vault: CredentialVault, connection: TestConnection
) -> None:
    async with pool.acquire() as conn:
        second = await connect_account(conn, vault, connection.user_id, connection.login + 500_000)
    group = [connection.created.account_id, second.created.account_id]
    await keep_zones(pool, connection)
    await deliver(pool, [batch(connection, history()), batch(second, other_history())])

    async with pool.acquire() as conn:
        assert (
            await conn.fetchval(
                "SELECT count(*) FROM analytics_portfolios WHERE user_id = $1", connection.user_id
            )
            == 0
        )
        read = await read_totals(conn, group, "UTC", {}, [frozenset(group)])
        recomputed = await journal_days(conn, group, "UTC")
    assert read == totals_of_days(group, recomputed, {}, [frozenset(group)])
    assert read.runs(frozenset(group)).streaks.longest_loss >= 2
