"""Some accounts' totals (totals.Totals) read from the rollup, added up in SQL: what an answer
reads grows with the days, not the trades. Only the median duration reads durations, and only
those of the bucket it falls in; a group's streaks come from its portfolio's daily runs, or,
for a group not kept as a portfolio, from its accounts' outcomes merged day by day."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from datetime import date
from decimal import Decimal
from itertools import accumulate

from services.shared.analytics.days import DURATION_BOUNDS
from services.shared.analytics.metrics import Anchor, DayTotal, Tally, median_of_middle
from services.shared.analytics.rollup import portfolio_key
from services.shared.analytics.streaks import Runs, in_order, merged_runs
from services.shared.analytics.totals import Group, Totals
from services.shared.database import Connection

# Each query's $1 to $4: the accounts, the zone, and the first and last day (none: open).
# Each account's tally over the range, its days' runs in day order, and what its balance moved
# by through its anchor's day.
_TALLIES = """
SELECT r.account_id,
    coalesce(sum(r.trades) FILTER (WHERE w.inside), 0) AS trades,
    coalesce(sum(r.wins) FILTER (WHERE w.inside), 0) AS wins,
    coalesce(sum(r.losses) FILTER (WHERE w.inside), 0) AS losses,
    coalesce(sum(r.gross_profit) FILTER (WHERE w.inside), 0) AS gross_profit,
    coalesce(sum(r.gross_loss) FILTER (WHERE w.inside), 0) AS gross_loss,
    max(r.largest_win) FILTER (WHERE w.inside) AS largest_win,
    min(r.largest_loss) FILTER (WHERE w.inside) AS largest_loss,
    coalesce(sum(r.gross_profit + r.gross_loss + r.charges + r.flows)
        FILTER (WHERE r.day <= a.anchor_day), 0) AS through_anchor,
    array_agg(r.first_run ORDER BY r.day) FILTER (WHERE w.inside AND r.first_run <> 0)
        AS first_runs,
    array_agg(r.last_run ORDER BY r.day) FILTER (WHERE w.inside AND r.first_run <> 0)
        AS last_runs,
    array_agg(r.longest_win ORDER BY r.day) FILTER (WHERE w.inside AND r.first_run <> 0)
        AS longest_wins,
    array_agg(r.longest_loss ORDER BY r.day) FILTER (WHERE w.inside AND r.first_run <> 0)
        AS longest_losses
FROM unnest($1::uuid[], $5::date[]) AS a(account_id, anchor_day)
JOIN analytics_daily AS r ON r.account_id = a.account_id AND r.time_zone = $2
CROSS JOIN LATERAL (SELECT ($3::date IS NULL OR r.day >= $3) AND ($4::date IS NULL OR r.day <= $4))
    AS w(inside)
GROUP BY r.account_id
"""
# The fewest sums of numerics (the costliest part): the rest is added up from them.
_DAYS = """
SELECT day, sum(gross_profit + gross_loss) AS trade_pnl, sum(charges) AS charges,
    sum(flows) AS flows, sum(trades) AS trades
FROM analytics_daily WHERE account_id = ANY($1::uuid[]) AND time_zone = $2
GROUP BY day ORDER BY day
"""
# Per bucket of DURATION_BOUNDS.
_DURATION_COUNTS = """
SELECT coalesce(sum(r.duration_buckets[1]), 0), coalesce(sum(r.duration_buckets[2]), 0),
    coalesce(sum(r.duration_buckets[3]), 0), coalesce(sum(r.duration_buckets[4]), 0),
    coalesce(sum(r.duration_buckets[5]), 0), coalesce(sum(r.duration_buckets[6]), 0),
    coalesce(sum(r.duration_buckets[7]), 0), coalesce(sum(r.duration_buckets[8]), 0)
FROM analytics_daily AS r WHERE r.account_id = ANY($1::uuid[]) AND r.time_zone = $2
    AND ($3::date IS NULL OR r.day >= $3) AND ($4::date IS NULL OR r.day <= $4)
"""
# The durations from microseconds $5 (none: the lowest) up to $6 (exclusive; none: the
# highest), ascending, from the $7th on, $8 of them: each day's durations are ascending, so
# its part of that range is a slice found by binary search (width_bucket).
_DURATIONS_BETWEEN = """
SELECT d FROM analytics_daily AS r,
    unnest(r.durations[
        CASE WHEN $5::bigint IS NULL THEN 1
            ELSE width_bucket($5::bigint - 1, r.durations) + 1 END
        : CASE WHEN $6::bigint IS NULL THEN cardinality(r.durations)
            ELSE width_bucket($6::bigint - 1, r.durations) END
    ]) AS d
WHERE r.account_id = ANY($1::uuid[]) AND r.time_zone = $2
    AND ($3::date IS NULL OR r.day >= $3) AND ($4::date IS NULL OR r.day <= $4)
    AND cardinality(r.durations) > 0
ORDER BY d OFFSET $7 LIMIT $8
"""
_PORTFOLIO_RUNS = """
SELECT p.accounts,
    array_agg(r.first_run ORDER BY r.day) FILTER (WHERE r.day IS NOT NULL) AS first_runs,
    array_agg(r.last_run ORDER BY r.day) FILTER (WHERE r.day IS NOT NULL) AS last_runs,
    array_agg(r.longest_win ORDER BY r.day) FILTER (WHERE r.day IS NOT NULL) AS longest_wins,
    array_agg(r.longest_loss ORDER BY r.day) FILTER (WHERE r.day IS NOT NULL) AS longest_losses
FROM analytics_portfolios AS p
LEFT JOIN analytics_portfolio_daily AS r ON r.portfolio_id = p.id
    AND ($3::date IS NULL OR r.day >= $3) AND ($4::date IS NULL OR r.day <= $4)
WHERE p.accounts && $1::uuid[] AND p.time_zone = $2
GROUP BY p.id, p.accounts
"""
_OUTCOMES = """
SELECT r.day, r.account_id, r.outcomes FROM analytics_daily AS r
WHERE r.account_id = ANY($1::uuid[]) AND r.time_zone = $2
    AND ($3::date IS NULL OR r.day >= $3) AND ($4::date IS NULL OR r.day <= $4) AND r.first_run <> 0
"""


def _runs(row: object) -> Runs:
    """The runs of the days in one row's arrays (`first_runs`... in day order), combined."""
    columns = [row[c] or [] for c in ("first_runs", "last_runs", "longest_wins", "longest_losses")]  # type: ignore[index]
    return in_order(Runs(*day) for day in zip(*columns, strict=True))


def _bounds(bucket: int) -> tuple[int | None, int | None]:
    """A duration bucket's microseconds, from (none: the lowest) up to (none: the highest)."""
    lower = DURATION_BOUNDS[bucket][1] * 1_000_000 if bucket else None
    if bucket + 1 == len(DURATION_BOUNDS):
        return lower, None
    return lower, DURATION_BOUNDS[bucket + 1][1] * 1_000_000


async def _median(
    conn: Connection, where: tuple[object, ...], counts: Sequence[int]
) -> float | None:
    """The median duration in microseconds, reading only the durations of the buckets its
    middle one (or two) fall in."""
    total = sum(counts)
    if not total:
        return None
    ranks = ((total - 1) // 2, total // 2)
    ends = list(accumulate(counts))
    low, high = (next(b for b, end in enumerate(ends) if end > rank) for rank in ranks)
    lower, _ = _bounds(low)
    _, upper = _bounds(high)
    before = ends[low] - counts[low]
    rows = await conn.fetch(
        _DURATIONS_BETWEEN, *where, lower, upper, ranks[0] - before, ranks[1] - ranks[0] + 1
    )
    return median_of_middle(rows[0]["d"], rows[-1]["d"])


async def _group_runs(
    conn: Connection, where: tuple[object, ...], groups: Iterable[Group]
) -> dict[Group, Runs]:
    """Each group's runs over the range: from its portfolio's rows when kept, else from its
    accounts' outcomes merged day by day."""
    wanted = {g for g in groups if len(g) > 1}
    if not wanted:
        return {}
    found = {frozenset(r["accounts"]): _runs(r) for r in await conn.fetch(_PORTFOLIO_RUNS, *where)}
    runs = {g: found[g] for g in wanted if g in found}
    for group in wanted - runs.keys():
        days: dict[date, list[tuple[uuid.UUID, Sequence[int]]]] = {}
        rows = await conn.fetch(_OUTCOMES, portfolio_key(group), *where[1:])
        for r in rows:
            days.setdefault(r["day"], []).append((r["account_id"], r["outcomes"]))
        runs[group] = in_order(merged_runs(days[d]) for d in sorted(days))
    return runs


async def read_totals(
    conn: Connection,
    accounts: Sequence[uuid.UUID],
    time_zone: str,
    anchors: dict[uuid.UUID, Anchor],
    groups: Iterable[Group] = (),
    first: date | None = None,
    last: date | None = None,
) -> Totals:
    """The totals of `accounts` in `time_zone` over [first, last], as `totals_of_days` computes
    them from the same rows (as whoever `conn` runs as sees them)."""
    ids = list(accounts)
    where = (ids, time_zone, first, last)
    anchor_days = [anchors[a].day if a in anchors else None for a in ids]
    tallies = {a: Tally(a, 0, 0, 0, Decimal(0), Decimal(0), None, None, Runs()) for a in ids}
    # An anchored account's balance before its first day: the anchor's, less what it moved by
    # through the anchor's day (nothing, for an account with no days).
    moved = {a: Decimal(0) for a in ids}
    for r in await conn.fetch(_TALLIES, *where, anchor_days):
        account = r["account_id"]
        tallies[account] = Tally(
            account,
            r["trades"],
            r["wins"],
            r["losses"],
            r["gross_profit"],
            r["gross_loss"],
            r["largest_win"],
            r["largest_loss"],
            _runs(r),
        )
        moved[account] = r["through_anchor"]
    opening = sum((anchors[a].balance - moved[a] for a in ids if a in anchors), Decimal(0))
    counts = tuple(await conn.fetchrow(_DURATION_COUNTS, *where) or ())
    return Totals(
        tallies=tallies,
        group_runs=await _group_runs(conn, where, groups),
        opening=opening,
        days=tuple(
            DayTotal(
                day=r["day"],
                balance_change=r["trade_pnl"] + r["charges"] + r["flows"],
                flows=r["flows"],
                pnl=r["trade_pnl"] + r["charges"],
                trade_pnl=r["trade_pnl"],
                trades=r["trades"],
            )
            for r in await conn.fetch(_DAYS, ids, time_zone)
        ),
        duration_counts=counts,
        median_duration_micros=await _median(conn, where, counts),
    )
