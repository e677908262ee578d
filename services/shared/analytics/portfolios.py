"""The portfolios' daily runs (table analytics_portfolio_daily): for each group of a user's
accounts kept in a zone, the runs of each day's wins and losses of all its accounts merged in
close order, computed from the accounts' own rows of that day (their outcomes). The callers
(rollup.py) hold the user's rollup lock, and have written the accounts' rows first."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from datetime import date

from services.shared.analytics.streaks import Runs, merged_runs
from services.shared.database import Connection

# Each kept portfolio one of these account days is in, on that day, with its accounts' rows of
# the day that have wins or losses (none: a row of nulls, so the day is still recomputed).
_TOUCHED_MEMBERS = """
WITH touched AS (
    SELECT DISTINCT p.id, p.user_id, p.time_zone, p.accounts, t.day
    FROM unnest($1::uuid[], $2::text[], $3::date[], $4::uuid[])
        AS t(user_id, time_zone, day, account_id)
    JOIN analytics_portfolios AS p ON p.user_id = t.user_id AND p.time_zone = t.time_zone
        AND t.account_id = ANY(p.accounts)
)
SELECT t.id, t.user_id, t.day, r.account_id, r.outcomes
FROM touched AS t LEFT JOIN analytics_daily AS r ON r.account_id = ANY(t.accounts)
    AND r.time_zone = t.time_zone AND r.day = t.day AND r.first_run <> 0
"""
_MEMBERS = """
SELECT r.day, r.account_id, r.outcomes FROM analytics_daily AS r
WHERE r.account_id = ANY($1::uuid[]) AND r.time_zone = $2 AND r.first_run <> 0
"""
_DELETE = """
DELETE FROM analytics_portfolio_daily AS r
USING unnest($1::uuid[], $2::date[]) AS d(portfolio_id, day)
WHERE r.portfolio_id = d.portfolio_id AND r.day = d.day
"""
_COLUMNS = (
    "portfolio_id",
    "user_id",
    "day",
    "first_run",
    "last_run",
    "longest_win",
    "longest_loss",
)

Parts = list[tuple[uuid.UUID, Sequence[int]]]


async def _write(conn: Connection, rows: Iterable[tuple[uuid.UUID, uuid.UUID, date, Runs]]) -> None:
    records = [
        (portfolio, user, day, r.first, r.last, r.longest_win, r.longest_loss)
        for portfolio, user, day, r in rows
        if r.first
    ]
    if records:
        await conn.copy_records_to_table(
            "analytics_portfolio_daily", records=records, columns=_COLUMNS
        )


async def refresh_portfolio_days(
    conn: Connection, touched: Sequence[tuple[uuid.UUID, str, date, uuid.UUID]]
) -> int:
    """Recompute the day of every kept portfolio that these (user, zone, day, account) days
    are in; how many portfolio days."""
    if not touched:
        return 0
    columns = [list(c) for c in zip(*touched, strict=True)]
    days: dict[tuple[uuid.UUID, uuid.UUID, date], Parts] = {}
    for r in await conn.fetch(_TOUCHED_MEMBERS, *columns):
        parts = days.setdefault((r["id"], r["user_id"], r["day"]), [])
        if r["account_id"] is not None:
            parts.append((r["account_id"], r["outcomes"]))
    if not days:
        return 0
    await conn.execute(_DELETE, [k[0] for k in days], [k[2] for k in days])
    await _write(conn, ((p, u, d, merged_runs(parts)) for (p, u, d), parts in days.items()))
    return len(days)


async def fill_portfolio(
    conn: Connection,
    portfolio_id: uuid.UUID,
    user_id: uuid.UUID,
    time_zone: str,
    accounts: Sequence[uuid.UUID],
) -> None:
    """A new portfolio's rows from its accounts' rows of every day."""
    days: dict[date, Parts] = {}
    for r in await conn.fetch(_MEMBERS, list(accounts), time_zone):
        days.setdefault(r["day"], []).append((r["account_id"], r["outcomes"]))
    rows = ((portfolio_id, user_id, d, merged_runs(parts)) for d, parts in days.items())
    await _write(conn, rows)
