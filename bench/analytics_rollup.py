"""Analytics from the daily rollup against the same figures recomputed from the journal rows:
200,000 closed trades over 5 years in 10 accounts on an embedded Postgres, the rollup kept by
the writer's own SQL as the trades land (in shuffled chunks, so days are recomputed as late
trades reach them). Prints one JSON object: both timings, the speedup, whether the figures are
exactly equal, and whether the targets are met (equal, speedup >= 20)."""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, TypeVar

import asyncpg
import orjson

from services.devstack.postgres import EmbeddedPostgres
from services.shared.analytics.days import (
    local_day,
)
from services.shared.analytics.metrics import Anchor
from services.shared.analytics.report import Account, Report, groups, report, report_of_totals
from services.shared.analytics.rollup import fill_zone, journal_days, keep_portfolios, refresh_days
from services.shared.analytics.rollup_reading import read_totals
from services.shared.connection_admin.connections import create_connection, create_user
from services.shared.crypto import LocalKeyEncryptionKey, new_master_key_base64
from services.shared.migrations import apply_migrations
from services.shared.vault import CredentialVault

ZONE = "Europe/Berlin"
START = datetime(2021, 1, 4, tzinfo=UTC)
YEARS = 5
T = TypeVar("T")

_ACCOUNTS = """
SELECT DISTINCT ON (a.id) a.id, a.name, a.currency, a.current_balance, a.balance_as_of,
    c.broker
FROM trading_accounts AS a JOIN mt5_connections AS c ON c.account_id = a.id
WHERE a.user_id = $1 ORDER BY a.id
"""


def _trades(account: uuid.UUID, count: int, rng: random.Random) -> list[tuple[object, ...]]:
    """Journal rows: weekday closes over the years, durations from seconds to weeks."""
    span = int(timedelta(days=365 * YEARS).total_seconds())
    rows: list[tuple[object, ...]] = []
    for n in range(count):
        closed = START + timedelta(seconds=rng.randrange(span), microseconds=rng.randrange(10**6))
        if closed.weekday() >= 5:
            closed -= timedelta(days=2)
        opened = closed - timedelta(seconds=int(rng.lognormvariate(7, 2.2)))
        profit = Decimal(rng.randrange(-9000, 10000)) / 100
        commission = -Decimal(rng.randrange(0, 700)) / 100
        swap = Decimal(rng.randrange(-300, 100)) / 100
        trade_id = f"bench:{account}:{n}"
        rows.append((trade_id, trade_id, account, opened, closed, profit, commission, swap))
    return rows


async def _seed(
    dsn: str, accounts: int, trades: int, seed: int, chunks: int
) -> tuple[uuid.UUID, int]:
    """The user, their accounts, their deposits and journal, the rollup kept as it lands."""
    rng = random.Random(seed)
    vault = CredentialVault(LocalKeyEncryptionKey.from_base64(new_master_key_base64()))
    conn = await asyncpg.connect(dsn)
    try:
        user_id = await create_user(conn, "bench@poscal.test")
        async with conn.transaction():
            await fill_zone(conn, user_id, ZONE)
        ids = []
        for i in range(accounts):
            created = await create_connection(
                conn,
                vault,
                user_id=user_id,
                broker="mt5" if i % 2 else "oanda",
                connection_type="live",
                account_number=str(5_000_000 + i),
                server="Bench-Live" if i % 2 else "",
                account_label=f"bench {i}",
                ingest_url="http://127.0.0.1:8080",
            )
            ids.append((created.account_id, created.connection_id))
        # The portfolios the answer's streaks need (all accounts, each broker's), kept by the
        # writer's SQL from here on, as the API keeps them from the first answer on.
        selected, _ = await _accounts(conn, user_id)
        async with conn.transaction():
            await keep_portfolios(conn, user_id, ZONE, groups(selected))
        rows: list[tuple[object, ...]] = []
        for account, _ in ids:
            rows += _trades(account, trades // accounts, rng)
        movements = []
        for k, (account, connection) in enumerate(ids):
            movements.append(
                (
                    f"bench:dep:{k}",
                    user_id,
                    connection,
                    account,
                    "deposit",
                    Decimal(50_000),
                    START - timedelta(days=1),
                )
            )
            for month in range(YEARS * 12):
                when = START + timedelta(days=30 * month + rng.randrange(28), hours=9)
                amount = Decimal(rng.choice((-1500, -500, 700, 2000)))
                kind = "deposit" if amount > 0 else "withdrawal"
                movements.append(
                    (f"bench:m:{k}:{month}", user_id, connection, account, kind, amount, when)
                )
        rng.shuffle(rows)
        rng.shuffle(movements)
        for c in range(chunks):
            part = rows[c::chunks]
            moved = movements[c::chunks]
            async with conn.transaction():
                await conn.copy_records_to_table(
                    "trading_journal",
                    records=[(user_id, "live", "EURUSD", "buy", "closed", *r) for r in part],
                    columns=(
                        "user_id",
                        "connection_type",
                        "symbol",
                        "side",
                        "status",
                        "mt5_trade_id",
                        "position_key",
                        "account_id",
                        "opened_at",
                        "closed_at",
                        "profit",
                        "commission",
                        "swap",
                    ),
                )
                await conn.copy_records_to_table(
                    "broker_cash_movements",
                    records=[(*m, "", "bench", uuid.uuid4()) for m in moved],
                    columns=(
                        "movement_key",
                        "user_id",
                        "connection_id",
                        "account_id",
                        "kind",
                        "amount",
                        "executed_at",
                        "broker_time",
                        "broker_ref",
                        "event_id",
                    ),
                )
                touched: list[tuple[Any, Any]] = [(r[2], r[4]) for r in part]
                touched += [(m[3], m[6]) for m in moved]
                await refresh_days(conn, [], touched)
            if c == 0:
                await conn.execute("ANALYZE")
        await conn.execute(
            "UPDATE trading_accounts SET current_balance = 61234.56, balance_as_of = $2"
            " WHERE user_id = $1",
            user_id,
            START + timedelta(days=365 * YEARS),
        )
        days: int = await conn.fetchval("SELECT count(*) FROM analytics_daily")
        days += await conn.fetchval("SELECT count(*) FROM analytics_portfolio_daily")
        return user_id, days
    finally:
        await conn.close()


async def _accounts(
    conn: asyncpg.Connection, user_id: uuid.UUID
) -> tuple[list[Account], dict[uuid.UUID, Anchor]]:
    rows = await conn.fetch(_ACCOUNTS, user_id)
    accounts = [Account(r["id"], r["name"], r["broker"], r["currency"]) for r in rows]
    anchors = {
        r["id"]: Anchor(r["current_balance"], local_day(r["balance_as_of"], ZONE))
        for r in rows
        if r["balance_as_of"] is not None
    }
    return accounts, anchors


async def from_rollup(conn: asyncpg.Connection, user_id: uuid.UUID) -> Report:
    """What GET /v1/analytics computes: the rollup's rows added up in SQL into the figures."""
    accounts, anchors = await _accounts(conn, user_id)
    ids = [a.account_id for a in accounts]
    totals = await read_totals(conn, ids, ZONE, anchors, groups(accounts))
    return report_of_totals(accounts, totals)


async def from_journal(conn: asyncpg.Connection, user_id: uuid.UUID) -> Report:
    """The same figures recomputed from every journal row and movement."""
    accounts, anchors = await _accounts(conn, user_id)
    days = await journal_days(conn, [a.account_id for a in accounts], ZONE)
    return report(accounts, days, anchors)


async def _timed(run: Callable[[], Awaitable[T]]) -> tuple[T, float]:
    started = time.perf_counter()
    result = await run()
    return result, time.perf_counter() - started


async def _measure(dsn: str, args: argparse.Namespace) -> dict[str, object]:
    await apply_migrations(dsn)
    seeded = time.perf_counter()
    user_id, days = await _seed(dsn, args.accounts, args.trades, args.seed, args.chunks)
    seeding = time.perf_counter() - seeded
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("ANALYZE")
        # Side by side, alternating, so both see the same machine: the median of each.
        rollup_times, journal_times = [], []
        for _ in range(args.repeats):
            rollup, took = await _timed(lambda: from_rollup(conn, user_id))
            rollup_times.append(took)
            journal, took = await _timed(lambda: from_journal(conn, user_id))
            journal_times.append(took)
        rollup_s = statistics.median(rollup_times)
        journal_s = statistics.median(journal_times)
    finally:
        await conn.close()
    equal = rollup == journal
    speedup = journal_s / rollup_s
    return {
        "bench": "analytics_rollup",
        "trades": rollup.headline.trades,
        "accounts": args.accounts,
        "years": YEARS,
        "rollup_rows": days,
        "time_zone": ZONE,
        "seed_seconds": round(seeding, 1),
        "rollup_seconds": round(rollup_s, 4),
        "journal_seconds": round(journal_s, 4),
        "speedup": round(speedup, 1),
        "equal": equal,
        "net_pnl": str(rollup.headline.net_pnl),
        "sharpe": rollup.sharpe.value,
        "max_drawdown": rollup.max_drawdown.percent,
        "target_equal": equal,
        "target_speedup_20x": speedup >= 20,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trades", type=int, default=200_000)
    parser.add_argument("--accounts", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument(
        "--chunks", type=int, default=8, help="the trades land in this many shuffled parts"
    )
    args = parser.parse_args(argv)
    with EmbeddedPostgres(database="poscal_bench") as postgres:
        result = asyncio.run(_measure(postgres.dsn, args))
    sys.stdout.write(orjson.dumps(result).decode() + "\n")
    return 0 if result["target_equal"] else 1


if __name__ == "__main__":
    sys.exit(main())
