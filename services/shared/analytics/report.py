"""Every figure of one analytics answer, pure: the selected accounts' day summaries (all their
days, in one zone) and balance anchors in, the headline, series, drawdown, Sharpe, durations,
calendar and the breakdowns per broker and per account out."""

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
    daily_returns,
    durations,
    max_drawdown,
    sharpe,
    tally,
)


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


def _within(day: date, first: date | None, last: date | None) -> bool:
    return (first is None or day >= first) and (last is None or day <= last)


def report(
    accounts: Sequence[Account],
    days: Sequence[DaySummary],
    anchors: dict[uuid.UUID, Anchor],
    first: date | None = None,
    last: date | None = None,
    risk_free_rate: float = 0.0,
    periods_per_year: int = PERIODS_PER_YEAR,
) -> Report:
    """The figures of `accounts` over the days [first, last] (either open). `days` are all the
    accounts' days, before `first` too: their balances start from them."""
    selected = {a.account_id for a in accounts}
    days = sorted((d for d in days if d.account_id in selected), key=lambda d: d.day)
    in_range = [d for d in days if _within(d.day, first, last)]
    returns = daily_returns(days, anchors, first, last)
    points = curve(returns)
    per_account: dict[uuid.UUID, list[DaySummary]] = {a.account_id: [] for a in accounts}
    for d in in_range:
        per_account[d.account_id].append(d)
    by_account = {account: tally(account, days) for account, days in per_account.items()}
    brokers = sorted({a.broker or "" for a in accounts})
    return Report(
        headline=combined_headline(list(by_account.values())),
        daily_returns=tuple(returns),
        curve=tuple(points),
        max_drawdown=max_drawdown(returns, points),
        sharpe=sharpe(returns, risk_free_rate, periods_per_year),
        durations=durations(in_range),
        calendar=calendar(in_range),
        by_broker=tuple(
            BrokerBreakdown(
                broker=broker,
                accounts=sum(1 for a in accounts if (a.broker or "") == broker),
                headline=combined_headline(
                    [by_account[a.account_id] for a in accounts if (a.broker or "") == broker]
                ),
            )
            for broker in brokers
        ),
        by_account=tuple(
            AccountBreakdown(
                a.account_id,
                a.name,
                a.broker,
                a.currency,
                combined_headline([by_account[a.account_id]]),
            )
            for a in sorted(accounts, key=lambda a: (a.name, a.account_id))
        ),
    )
