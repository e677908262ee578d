"""`GET /v1/analytics`: the signed-in user's trading figures, read as the user (row-level
security decides which accounts there are) from the daily rollup the writer keeps; the first
request in a time zone has that zone's rollup filled from the journal, once."""

from __future__ import annotations

import dataclasses
import uuid
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import asyncpg

from services.api.analytics_models import (
    AccountBreakdown,
    Analytics,
    AnalyticsQuery,
    AppliedFilters,
    BrokerBreakdown,
    Calendar,
    CurvePoint,
    DailyReturn,
    Durations,
    Excluded,
    Headline,
    MaxDrawdown,
    Sharpe,
)
from services.api.errors import FieldProblem, ValidationFailed
from services.api.operations import Call, Operation
from services.shared.analytics.days import local_day
from services.shared.analytics.metrics import Anchor
from services.shared.analytics.report import Account, groups, report_of_totals
from services.shared.analytics.rollup import fill_zone, keep_portfolios
from services.shared.analytics.rollup_reading import read_totals

if TYPE_CHECKING:
    from services.api.bootstrap import ApiWiring

# The user's synced accounts, each with the type and broker of the connection that feeds it.
_ACCOUNTS = """
SELECT DISTINCT ON (a.id) a.id, a.name, a.currency, a.current_balance, a.balance_as_of,
    a.equity, c.broker, c.connection_type
FROM trading_accounts AS a JOIN mt5_connections AS c ON c.account_id = a.id
ORDER BY a.id, c.created_at
"""
_ZONE_KEPT = "SELECT EXISTS (SELECT 1 FROM analytics_time_zones WHERE time_zone = $1)"
_PORTFOLIOS = "SELECT accounts FROM analytics_portfolios WHERE time_zone = $1"


def _requested_accounts(query: AnalyticsQuery) -> set[uuid.UUID] | None:
    if query.accounts is None:
        return None
    return {uuid.UUID(part) for part in query.accounts.split(",")}


def _plain(value: Any) -> Any:
    return dataclasses.asdict(value)


def _with_equity(
    points: list[CurvePoint], chosen: list[asyncpg.Record], anchors: dict[uuid.UUID, Anchor]
) -> list[CurvePoint]:
    """The last point's equity, when every account's latest report is of that day and says it."""
    if not points or not chosen:
        return points
    last = points[-1]
    reported = [
        r["equity"] for r in chosen if r["id"] in anchors and anchors[r["id"]].day == last.date
    ]
    if len(reported) < len(chosen) or any(e is None for e in reported):
        return points
    return [*points[:-1], last.model_copy(update={"equity": sum(reported, Decimal(0))})]


async def analytics(call: Call) -> Analytics:
    query = call.query(AnalyticsQuery)
    if query.from_date and query.to_date and query.from_date > query.to_date:
        raise ValidationFailed([FieldProblem("query.to_date", "is before from_date")])
    wanted = _requested_accounts(query)
    wiring: ApiWiring = call.request.app.state.wiring
    async with call.db.as_user(call.caller) as conn:
        kept = await conn.fetchval(_ZONE_KEPT, query.time_zone)
        rows = await conn.fetch(_ACCOUNTS)
        portfolios = {
            frozenset(r["accounts"]) for r in await conn.fetch(_PORTFOLIOS, query.time_zone)
        }
    of_type = [r for r in rows if r["connection_type"] == query.connection_type]
    chosen = [
        r
        for r in of_type
        if (query.broker is None or r["broker"] == query.broker)
        and (wanted is None or r["id"] in wanted)
    ]
    accounts = [Account(r["id"], r["name"], r["broker"], r["currency"]) for r in chosen]
    # The groups whose streaks the answer holds, each kept as a portfolio from its first answer.
    needed = [g for g in groups(accounts) if len(g) > 1 and g not in portfolios]
    if not kept or needed:
        async with call.db.as_service_for_self(call.caller) as conn:
            if not kept:
                await fill_zone(conn, call.caller.user_id, query.time_zone)
            await keep_portfolios(conn, call.caller.user_id, query.time_zone, needed)
    anchors = {
        r["id"]: Anchor(r["current_balance"], local_day(r["balance_as_of"], query.time_zone))
        for r in chosen
        if r["balance_as_of"] is not None
    }
    # Its statements add up one state of the rollup, whatever the writer commits meanwhile.
    async with call.db.as_user(call.caller, one_snapshot=True) as conn:
        totals = await read_totals(
            conn,
            [a.account_id for a in accounts],
            query.time_zone,
            anchors,
            groups(accounts),
            query.from_date,
            query.to_date,
        )
    figures = report_of_totals(
        accounts, totals, query.from_date, query.to_date, wiring.risk_free_rate
    )
    return Analytics(
        filters=AppliedFilters(
            accounts=sorted(a.account_id for a in accounts),
            broker=query.broker,
            from_date=query.from_date,
            to_date=query.to_date,
            connection_type=query.connection_type,
            time_zone=query.time_zone,
        ),
        excluded=Excluded(other_connection_type_accounts=len(rows) - len(of_type)),
        currencies=sorted({a.currency for a in accounts if a.currency}),
        headline=Headline.model_validate(_plain(figures.headline)),
        daily_returns=[DailyReturn.model_validate(_plain(r)) for r in figures.daily_returns],
        curve=_with_equity(
            [CurvePoint.model_validate(_plain(p)) for p in figures.curve], chosen, anchors
        ),
        max_drawdown=MaxDrawdown.model_validate(_plain(figures.max_drawdown)),
        sharpe=Sharpe.model_validate(_plain(figures.sharpe)),
        durations=Durations.model_validate(_plain(figures.durations)),
        calendar=Calendar.model_validate(_plain(figures.calendar)),
        by_broker=[BrokerBreakdown.model_validate(_plain(b)) for b in figures.by_broker],
        by_account=[AccountBreakdown.model_validate(_plain(a)) for a in figures.by_account],
    )


OPERATIONS = (
    Operation(
        "GET",
        "/v1/analytics",
        analytics,
        operation_id="getAnalytics",
        summary="The user's trading figures: headline, returns, drawdown, Sharpe, calendar",
        description=(
            "Closed trades of the user's live accounts (or demo ones, when asked: never both),"
            " filtered by account, broker and days in the user's time zone. Each figure that"
            " could be read two ways says how it is defined (`definitions`, and the"
            " descriptions of each schema). The first request in a time zone prepares that"
            " zone's daily rollup from the journal; later ones read only the rollup."
        ),
        response=Analytics,
        query=AnalyticsQuery,
        cost=3,
    ),
)
