"""Every figure of one analytics answer, pure: the selected accounts' totals (totals.py: read
from the rollup, or computed from their day summaries and balance anchors) in, the headline,
series, drawdown, Sharpe, durations, calendar and the breakdowns per broker and per account
out."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date

from services.shared.analytics.days import DaySummary
from services.shared.analytics.metrics import (
    PERIODS_PER_YEAR,
    Anchor,
    Calendar,
    CurvePoint,
    DailyReturn,
    Durations,
    Headline,
    MaxDrawdown,
    Sharpe,
    calendar,
    combined_headline,
    curve,
    durations,
    max_drawdown,
    returns_of,
    sharpe,
)
from services.shared.analytics.totals import Group, Totals, totals_of_days, within


@dataclass(frozen=True)
class Account:
    account_id: uuid.UUID
    name: str
    broker: str | None
    currency: str | None


@dataclass(frozen=True)
class BrokerBreakdown:
    broker: str
    accounts: int
    headline: Headline


@dataclass(frozen=True)
class AccountBreakdown:
    account_id: uuid.UUID
    name: str
    broker: str | None
    currency: str | None
    headline: Headline


@dataclass(frozen=True)
class Report:
    headline: Headline
    daily_returns: tuple[DailyReturn, ...]
    curve: tuple[CurvePoint, ...]
    max_drawdown: MaxDrawdown
    sharpe: Sharpe
    durations: Durations
    calendar: Calendar
    by_broker: tuple[BrokerBreakdown, ...]
    by_account: tuple[AccountBreakdown, ...]


def groups(accounts: Sequence[Account]) -> list[Group]:
    """The groups of accounts whose streaks an answer holds: all of them, and each broker's."""
    brokers = {a.broker or "" for a in accounts}
    every = [frozenset(a.account_id for a in accounts)]
    return every + [
        frozenset(a.account_id for a in accounts if (a.broker or "") == broker)
        for broker in sorted(brokers)
    ]


def report(
    accounts: Sequence[Account],
    days: Sequence[DaySummary],
    anchors: dict[uuid.UUID, Anchor],
    first: date | None = None,
    last: date | None = None,
    risk_free_rate: float = 0.0,
    periods_per_year: int = PERIODS_PER_YEAR,
) -> Report:
    """The figures of `accounts` over the days [first, last] (either open) from their day
    summaries. `days` are all the accounts' days, before `first` too: their balances start
    from them."""
    ids = [a.account_id for a in accounts]
    totals = totals_of_days(ids, days, anchors, groups(accounts), first, last)
    return report_of_totals(accounts, totals, first, last, risk_free_rate, periods_per_year)


def report_of_totals(
    accounts: Sequence[Account],
    totals: Totals,
    first: date | None = None,
    last: date | None = None,
    risk_free_rate: float = 0.0,
    periods_per_year: int = PERIODS_PER_YEAR,
) -> Report:
    """The figures of `accounts` over the days [first, last] from their totals (with the runs
    of every group in `groups(accounts)`)."""
    returns = returns_of(totals.days, totals.opening, first, last)
    points = curve(returns)

    def headline_of(chosen: Sequence[Account]) -> Headline:
        group = frozenset(a.account_id for a in chosen)
        return combined_headline([totals.tallies[a] for a in sorted(group)], totals.runs(group))

    brokers = sorted({a.broker or "" for a in accounts})
    return Report(
        headline=headline_of(accounts),
        daily_returns=tuple(returns),
        curve=tuple(points),
        max_drawdown=max_drawdown(returns, points),
        sharpe=sharpe(returns, risk_free_rate, periods_per_year),
        durations=durations(totals.duration_counts, totals.median_duration_micros),
        calendar=calendar(d for d in totals.days if within(d.day, first, last)),
        by_broker=tuple(
            BrokerBreakdown(
                broker=broker,
                accounts=len(chosen),
                headline=headline_of(chosen),
            )
            for broker in brokers
            for chosen in [[a for a in accounts if (a.broker or "") == broker]]
        ),
        by_account=tuple(
            AccountBreakdown(a.account_id, a.name, a.broker, a.currency, headline_of([a]))
            for a in sorted(accounts, key=lambda a: (a.name, a.account_id))
        ),
    )
