"""The daily rollup's SQL (table analytics_daily): the days a write touched recomputed from
their journal rows and movements, with the days of the portfolios they are in
(`refresh_days`, called by the writer in the journal's transaction), a zone's rows filled from
scratch (`fill_zone`, by the API the first time a user asks for that zone), a portfolio kept
from the first answer that needs it (`keep_portfolios`), and the rows read back (`read_days`).

Every writer of the rows holds the same per-user lock, so a zone or portfolio being filled and
a day being recomputed never miss each other's rows, and a portfolio's day is computed from
its accounts' rows as the last transaction to touch any of them left them."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from datetime import datetime

from services.shared.analytics.days import (
    ClosedTrade,
    DaySummary,
    Movement,
    day_bounds,
    local_day,
    summarize_day,
    summarize_days,
    trade_pnl,
)
from services.shared.analytics.portfolios import fill_portfolio, refresh_portfolio_days
from services.shared.analytics.streaks import Runs
from services.shared.canonical import CanonicalBatch
from services.shared.database import Connection

_LOCK_OWNERS = """
SELECT count(pg_advisory_xact_lock(hashtextextended('analytics_daily:' || u::text, 7)))
FROM (SELECT DISTINCT user_id AS u FROM trading_accounts WHERE id = ANY($1::uuid[]) ORDER BY 1)
    AS ordered
"""
_LOCK_USER = (
    "SELECT pg_advisory_xact_lock(hashtextextended('analytics_daily:' || $1::uuid::text, 7))"
)
# Every instant a touched position's trade closed, or closed before a late fill moved it: the
# days of all its fills, cancelled ones included, of the connection that owns it.
_FILL_INSTANTS = """
SELECT DISTINCT f.account_id, f.executed_at
FROM broker_fills AS f
JOIN unnest($1::text[], $2::uuid[]) AS p(position_key, connection_id)
    ON f.position_key = p.position_key AND f.connection_id = p.connection_id
"""
_ZONES = """
SELECT a.id AS account_id, a.user_id, z.time_zone
FROM trading_accounts AS a JOIN analytics_time_zones AS z ON z.user_id = a.user_id
WHERE a.id = ANY($1::uuid[])
"""
_TRADES = """
SELECT d.i, coalesce(j.mt5_trade_id, j.id::text) AS trade_id, j.closed_at, j.opened_at, j.profit,
    j.commission, j.swap, j.fees
FROM unnest($1::int[], $2::uuid[], $3::uuid[], $4::timestamptz[], $5::timestamptz[])
    AS d(i, account_id, user_id, starts, ends)
JOIN trading_journal AS j ON j.account_id = d.account_id AND j.user_id = d.user_id
    AND j.status = 'closed' AND j.closed_at >= d.starts AND j.closed_at < d.ends
"""
_MOVEMENTS = """
SELECT d.i, m.kind, m.amount
FROM unnest($1::int[], $2::uuid[], $3::uuid[], $4::timestamptz[], $5::timestamptz[])
    AS d(i, account_id, user_id, starts, ends)
JOIN broker_cash_movements AS m ON m.account_id = d.account_id AND m.user_id = d.user_id
    AND m.position_key IS NULL AND m.executed_at >= d.starts AND m.executed_at < d.ends
"""
_DELETE_DAYS = """
DELETE FROM analytics_daily AS r
USING unnest($1::uuid[], $2::text[], $3::date[]) AS d(account_id, time_zone, day)
WHERE r.account_id = d.account_id AND r.time_zone = d.time_zone AND r.day = d.day
"""
_COLUMNS = (
    "account_id",
    "user_id",
    "time_zone",
    "day",
    "trades",
    "wins",
    "losses",
    "gross_profit",
    "gross_loss",
    "largest_win",
    "largest_loss",
    "charges",
    "flows",
    "duration_buckets",
    "durations",
    "outcomes",
    "first_run",
    "last_run",
    "longest_win",
    "longest_loss",
)
_ADD_ZONE = """
INSERT INTO analytics_time_zones (user_id, time_zone) VALUES ($1, $2)
ON CONFLICT DO NOTHING RETURNING time_zone
"""
_USERS_ACCOUNTS = "SELECT id FROM trading_accounts WHERE user_id = $1"
# Every closed trade and account-level movement of these accounts, their owner's own only.
_ALL_TRADES = """
SELECT j.account_id, coalesce(j.mt5_trade_id, j.id::text) AS trade_id, j.closed_at,
    j.opened_at, j.profit, j.commission, j.swap, j.fees
FROM trading_journal AS j JOIN trading_accounts AS a ON a.id = j.account_id
WHERE j.account_id = ANY($1::uuid[]) AND j.user_id = a.user_id AND j.status = 'closed'
    AND j.closed_at IS NOT NULL
"""
_ALL_MOVEMENTS = """
SELECT m.account_id, m.executed_at, m.kind, m.amount
FROM broker_cash_movements AS m JOIN trading_accounts AS a ON a.id = m.account_id
WHERE m.account_id = ANY($1::uuid[]) AND m.user_id = a.user_id AND m.position_key IS NULL
"""
_READ = """
SELECT account_id, day, trades, wins, losses, gross_profit, gross_loss, largest_win,
    largest_loss, charges, flows, duration_buckets, durations, outcomes, first_run, last_run,
    longest_win, longest_loss
FROM analytics_daily WHERE account_id = ANY($1::uuid[]) AND time_zone = $2
"""


def _row(user_id: uuid.UUID, time_zone: str, s: DaySummary) -> tuple[object, ...]:
    return (
        s.account_id,
        user_id,
        time_zone,
        s.day,
        s.trades,
        s.wins,
        s.losses,
        s.gross_profit,
        s.gross_loss,
        s.largest_win,
        s.largest_loss,
        s.charges,
        s.flows,
        list(s.duration_buckets),
        list(s.durations),
        list(s.outcomes),
        s.runs.first,
        s.runs.last,
        s.runs.longest_win,
        s.runs.longest_loss,
    )


async def _write(conn: Connection, rows: Iterable[tuple[uuid.UUID, str, DaySummary]]) -> None:
    records = [_row(user_id, time_zone, s) for user_id, time_zone, s in rows]
    if records:
        await conn.copy_records_to_table("analytics_daily", records=records, columns=_COLUMNS)


async def refresh_days(
    conn: Connection,
    positions: Sequence[tuple[str, uuid.UUID]],
    touched: Iterable[tuple[uuid.UUID, datetime]],
) -> int:
    """Recompute, in every zone kept for its user, each day of an account that these positions
    (key, owning connection) or instants (account, when: an account-level movement's) touch;
    how many days. Run after the journal rows are written, in their transaction."""
    instants = set(touched)
    if positions:
        keys, connections = zip(*sorted(positions), strict=True)
        rows = await conn.fetch(_FILL_INSTANTS, list(keys), list(connections))
        instants |= {(r["account_id"], r["executed_at"]) for r in rows}
    if not instants:
        return 0
    accounts = sorted({account for account, _ in instants})
    await conn.fetchval(_LOCK_OWNERS, accounts)
    zones: dict[uuid.UUID, list[tuple[uuid.UUID, str]]] = {}
    for r in await conn.fetch(_ZONES, accounts):
        zones.setdefault(r["account_id"], []).append((r["user_id"], r["time_zone"]))
    days = sorted(
        {
            (account, user_id, time_zone, local_day(at, time_zone))
            for account, at in instants
            for user_id, time_zone in zones.get(account, ())
        }
    )
    if not days:
        return 0
    bounds = [day_bounds(day, time_zone) for _, _, time_zone, day in days]
    window = (
        list(range(len(days))),
        [d[0] for d in days],
        [d[1] for d in days],
        [b[0] for b in bounds],
        [b[1] for b in bounds],
    )
    trades: dict[int, list[ClosedTrade]] = {}
    for r in await conn.fetch(_TRADES, *window):
        trades.setdefault(r["i"], []).append(
            ClosedTrade(
                r["trade_id"],
                r["closed_at"],
                r["opened_at"],
                trade_pnl(r["profit"], r["commission"], r["swap"], r["fees"]),
            )
        )
    booked: dict[int, list[Movement]] = {}
    for r in await conn.fetch(_MOVEMENTS, *window):
        booked.setdefault(r["i"], []).append(Movement(r["kind"], r["amount"]))
    await conn.execute(
        _DELETE_DAYS, [d[0] for d in days], [d[2] for d in days], [d[3] for d in days]
    )
    summaries = (
        (user_id, time_zone, summarize_day(account, day, trades.get(i, ()), booked.get(i, ())))
        for i, (account, user_id, time_zone, day) in enumerate(days)
    )
    await _write(conn, ((u, z, s) for u, z, s in summaries if s is not None))
    await refresh_portfolio_days(conn, [(u, z, day, a) for a, u, z, day in days])
    return len(days)


async def refresh_for_batches(
    conn: Connection,
    batches: Sequence[CanonicalBatch],
    positions: Iterable[str],
    instants: Iterable[tuple[uuid.UUID, datetime]] = (),
) -> int:
    """`refresh_days` for what the writer just applied: the positions whose every fill's day
    it refreshes (owned by the connection that delivered them), the instants (account, when)
    it knows its other positions' rows closed at, before or now, and the batches'
    account-level movements."""
    owners = {
        key: b.connection.connection_id
        for b in batches
        for key in {f.position_key for f in b.fills}
        | {m.position_key for m in b.cash_movements if m.position_key is not None}
    }
    touched = set(instants) | {
        (b.connection.account_id, m.executed_at)
        for b in batches
        for m in b.cash_movements
        if m.position_key is None
    }
    return await refresh_days(conn, [(k, owners[k]) for k in positions], touched)


async def fill_zone(conn: Connection, user_id: uuid.UUID, time_zone: str) -> bool:
    """Keep the rollup of `user_id` in `time_zone` from now on, its rows computed from scratch
    the first time; whether this call added the zone."""
    await conn.execute(_LOCK_USER, user_id)
    accounts = [r["id"] for r in await conn.fetch(_USERS_ACCOUNTS, user_id)]
    if await conn.fetchval(_ADD_ZONE, user_id, time_zone) is None:
        return False
    await _write(
        conn, ((user_id, time_zone, s) for s in await journal_days(conn, accounts, time_zone))
    )
    return True


async def journal_days(
    conn: Connection, accounts: Sequence[uuid.UUID], time_zone: str
) -> list[DaySummary]:
    """Every day of these accounts computed from scratch from their journal rows and
    movements: what the rollup holds for them in `time_zone`."""
    trades: dict[uuid.UUID, list[ClosedTrade]] = {}
    for r in await conn.fetch(_ALL_TRADES, list(accounts)):
        trades.setdefault(r["account_id"], []).append(
            ClosedTrade(
                r["trade_id"],
                r["closed_at"],
                r["opened_at"],
                trade_pnl(r["profit"], r["commission"], r["swap"], r["fees"]),
            )
        )
    booked: dict[uuid.UUID, list[tuple[datetime, Movement]]] = {}
    for r in await conn.fetch(_ALL_MOVEMENTS, list(accounts)):
        booked.setdefault(r["account_id"], []).append(
            (r["executed_at"], Movement(r["kind"], r["amount"]))
        )
    return [
        s
        for account in sorted(trades.keys() | booked.keys())
        for s in summarize_days(
            account, time_zone, trades.get(account, ()), booked.get(account, ())
        )
    ]


async def read_days(
    conn: Connection, accounts: Sequence[uuid.UUID], time_zone: str
) -> list[DaySummary]:
    """The rollup's rows of these accounts in this zone (as whoever `conn` runs as sees them)."""
    return [
        DaySummary(
            account_id=r["account_id"],
            day=r["day"],
            trades=r["trades"],
            wins=r["wins"],
            losses=r["losses"],
            gross_profit=r["gross_profit"],
            gross_loss=r["gross_loss"],
            largest_win=r["largest_win"],
            largest_loss=r["largest_loss"],
            charges=r["charges"],
            flows=r["flows"],
            duration_buckets=tuple(r["duration_buckets"]),
            durations=tuple(r["durations"]),
            outcomes=tuple(r["outcomes"]),
            runs=Runs(r["first_run"], r["last_run"], r["longest_win"], r["longest_loss"]),
        )
        for r in await conn.fetch(_READ, list(accounts), time_zone)
    ]


# At most this many portfolios per user and zone, so the writer's work per day stays bounded;
# an answer for a group past them merges its accounts' outcomes instead (rollup_reading.py).
PORTFOLIOS_PER_ZONE = 16
_PORTFOLIOS = "SELECT accounts FROM analytics_portfolios WHERE user_id = $1 AND time_zone = $2"
# A portfolio with an account that is gone (its rows went with it) is of no answer any more.
_PRUNE_PORTFOLIOS = """
DELETE FROM analytics_portfolios AS p WHERE p.user_id = $1 AND EXISTS (
    SELECT 1 FROM unnest(p.accounts) AS a(id)
    WHERE NOT EXISTS (SELECT 1 FROM trading_accounts AS t WHERE t.id = a.id AND t.user_id = $1)
)
"""
_ADD_PORTFOLIO = """
INSERT INTO analytics_portfolios (user_id, time_zone, accounts)
SELECT $1, $2, $3::uuid[] FROM analytics_time_zones AS z
WHERE z.user_id = $1 AND z.time_zone = $2 AND (
    SELECT count(*) FROM trading_accounts WHERE id = ANY($3::uuid[]) AND user_id = $1
) = cardinality($3::uuid[])
ON CONFLICT DO NOTHING RETURNING id
"""


def portfolio_key(group: Iterable[uuid.UUID]) -> list[uuid.UUID]:
    """How a portfolio names its accounts: their ids, ascending."""
    return sorted(set(group))


async def keep_portfolios(
    conn: Connection, user_id: uuid.UUID, time_zone: str, groups: Iterable[Iterable[uuid.UUID]]
) -> int:
    """Keep each group of two or more of the user's accounts as a portfolio in a zone kept for
    them, its rows computed the first time (up to PORTFOLIOS_PER_ZONE); how many were added."""
    wanted = {tuple(portfolio_key(g)) for g in groups}
    wanted = {g for g in wanted if len(g) > 1}
    await conn.execute(_LOCK_USER, user_id)
    kept = {tuple(r["accounts"]) for r in await conn.fetch(_PORTFOLIOS, user_id, time_zone)}
    if not wanted - kept:
        return 0
    await conn.execute(_PRUNE_PORTFOLIOS, user_id)
    kept = {tuple(r["accounts"]) for r in await conn.fetch(_PORTFOLIOS, user_id, time_zone)}
    added = 0
    for group in sorted(wanted - kept):
        if len(kept) + added >= PORTFOLIOS_PER_ZONE:
            break
        portfolio_id = await conn.fetchval(_ADD_PORTFOLIO, user_id, time_zone, list(group))
        if portfolio_id is not None:
            await fill_portfolio(conn, portfolio_id, user_id, time_zone, group)
            added += 1
    return added
