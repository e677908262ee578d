"""The analytics' figures, pure: from the days' summaries (`days.DaySummary`, one zone) to the
headline figures, the time-weighted daily returns and the balance curve, max drawdown, Sharpe,
durations and the P&L calendar, by the definitions `GET /v1/analytics` states."""

from __future__ import annotations

import math
import statistics
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal

from services.shared.analytics.days import DURATION_BOUNDS, DaySummary
from services.shared.analytics.streaks import Runs, Streaks, in_order

PERIODS_PER_YEAR = 252  # FX/CFD: weekday returns
_ZERO = Decimal(0)
_MONDAY_TO_FRIDAY = 5


@dataclass(frozen=True)
class Headline:
    trades: int
    wins: int
    losses: int
    breakevens: int
    win_rate: float | None
    gross_profit: Decimal
    gross_loss: Decimal
    net_pnl: Decimal
    profit_factor: float | None
    expectancy: Decimal | None
    average_win: Decimal | None
    average_loss: Decimal | None
    largest_win: Decimal | None
    largest_loss: Decimal | None
    streaks: Streaks


@dataclass(frozen=True)
class Tally:
    """One account's days added up: what its headline, and any group's it is in, is made of."""

    account_id: uuid.UUID
    trades: int
    wins: int
    losses: int
    gross_profit: Decimal
    gross_loss: Decimal
    largest_win: Decimal | None
    largest_loss: Decimal | None
    runs: Runs


def tally(account_id: uuid.UUID, days: Sequence[DaySummary]) -> Tally:
    """One account's days (in day order) added up."""
    return Tally(
        account_id=account_id,
        trades=sum(d.trades for d in days),
        wins=sum(d.wins for d in days),
        losses=sum(d.losses for d in days),
        gross_profit=sum((d.gross_profit for d in days), _ZERO),
        gross_loss=sum((d.gross_loss for d in days), _ZERO),
        largest_win=max((d.largest_win for d in days if d.largest_win is not None), default=None),
        largest_loss=min(
            (d.largest_loss for d in days if d.largest_loss is not None), default=None
        ),
        runs=in_order(d.runs for d in days),
    )


def combined_headline(parts: Sequence[Tally], runs: Runs) -> Headline:
    """The headline figures of these accounts' tallies together, whose wins and losses in
    close order come to `runs`."""
    trades = sum(t.trades for t in parts)
    wins = sum(t.wins for t in parts)
    losses = sum(t.losses for t in parts)
    gross_profit = sum((t.gross_profit for t in parts), _ZERO)
    gross_loss = sum((t.gross_loss for t in parts), _ZERO)
    net = gross_profit + gross_loss
    decided = wins + losses
    return Headline(
        trades=trades,
        wins=wins,
        losses=losses,
        breakevens=trades - decided,
        win_rate=wins / decided if decided else None,
        gross_profit=gross_profit,
        gross_loss=gross_loss,
        net_pnl=net,
        profit_factor=float(gross_profit / -gross_loss) if losses else None,
        expectancy=net / trades if trades else None,
        average_win=gross_profit / wins if wins else None,
        average_loss=gross_loss / losses if losses else None,
        largest_win=max((t.largest_win for t in parts if t.largest_win is not None), default=None),
        largest_loss=min(
            (t.largest_loss for t in parts if t.largest_loss is not None), default=None
        ),
        streaks=runs.streaks,
    )


@dataclass(frozen=True)
class DurationBucket:
    label: str
    min_seconds: int
    max_seconds: int | None
    trades: int


@dataclass(frozen=True)
class Durations:
    buckets: tuple[DurationBucket, ...]
    median_seconds: float | None


def durations(counts: Sequence[int], median_micros: float | None) -> Durations:
    """The trades per bucket (in DURATION_BOUNDS' order) and the median, in microseconds."""
    uppers: list[int | None] = [bound for _, bound in DURATION_BOUNDS[1:]]
    uppers.append(None)
    return Durations(
        buckets=tuple(
            DurationBucket(label, lower, upper, count)
            for (label, lower), upper, count in zip(DURATION_BOUNDS, uppers, counts, strict=True)
        ),
        median_seconds=median_micros / 1_000_000 if median_micros is not None else None,
    )


def median_of_middle(lower: int, upper: int) -> float:
    """The median of an ordered series from its middle one (twice) or two."""
    return float(lower) if lower == upper else (lower + upper) / 2


def median(ordered: Sequence[int]) -> float | None:
    if not ordered:
        return None
    middle = len(ordered) // 2
    return median_of_middle(ordered[(len(ordered) - 1) // 2], ordered[middle])


@dataclass(frozen=True)
class CalendarDay:
    date: date
    pnl: Decimal
    trades: int


@dataclass(frozen=True)
class CalendarWeek:
    week_start: date
    pnl: Decimal
    trades: int


@dataclass(frozen=True)
class Calendar:
    daily: tuple[CalendarDay, ...]
    weekly: tuple[CalendarWeek, ...]


@dataclass(frozen=True)
class DayTotal:
    """Some accounts' day together: how their rebuilt balance moved, the flows in it, the P&L
    of their trades and charges, and their trades' alone."""

    day: date
    balance_change: Decimal
    flows: Decimal
    pnl: Decimal
    trade_pnl: Decimal
    trades: int


def day_totals(days: Iterable[DaySummary]) -> list[DayTotal]:
    """Several accounts' days added up day by day, in day order."""
    per_day: dict[date, list[DaySummary]] = {}
    for d in days:
        per_day.setdefault(d.day, []).append(d)
    return [
        DayTotal(
            day=day,
            balance_change=sum((d.balance_change for d in parts), _ZERO),
            flows=sum((d.flows for d in parts), _ZERO),
            pnl=sum((d.trade_pnl + d.charges for d in parts), _ZERO),
            trade_pnl=sum((d.trade_pnl for d in parts), _ZERO),
            trades=sum(d.trades for d in parts),
        )
        for day, parts in sorted(per_day.items())
    ]


def calendar(days: Iterable[DayTotal]) -> Calendar:
    daily = [CalendarDay(d.day, d.trade_pnl, d.trades) for d in days if d.trades]
    weekly: dict[date, tuple[Decimal, int]] = {}
    for d in daily:
        monday = d.date - timedelta(days=d.date.weekday())
        week_pnl, week_count = weekly.get(monday, (_ZERO, 0))
        weekly[monday] = (week_pnl + d.pnl, week_count + d.trades)
    return Calendar(
        daily=tuple(sorted(daily, key=lambda d: d.date)),
        weekly=tuple(CalendarWeek(day, pnl, n) for day, (pnl, n) in sorted(weekly.items())),
    )


@dataclass(frozen=True)
class Anchor:
    """An account's balance as its broker last reported it, on the local day it reported it."""

    balance: Decimal
    day: date


@dataclass(frozen=True)
class DailyReturn:
    date: date
    start_balance: Decimal
    end_balance: Decimal
    net_flows: Decimal
    pnl: Decimal
    value: float | None


def opening_balance(days: Iterable[DaySummary], anchor: Anchor | None) -> Decimal:
    """One account's balance before its first day: zero, or what places the anchor's day's end
    at the reported balance."""
    if anchor is None:
        return _ZERO
    return anchor.balance - sum((d.balance_change for d in days if d.day <= anchor.day), _ZERO)


def _weekday_on_or_after(day: date) -> date:
    while day.weekday() >= _MONDAY_TO_FRIDAY:
        day += timedelta(days=1)
    return day


def daily_returns(
    days: Sequence[DaySummary],
    anchors: dict[uuid.UUID, Anchor],
    first: date | None = None,
    last: date | None = None,
) -> list[DailyReturn]:
    """The accounts' combined time-weighted return of each weekday in [first, last] (bounded by
    their activity): what a weekend brings counts in the Monday after it."""
    per_account: dict[uuid.UUID, list[DaySummary]] = {}
    for d in days:
        per_account.setdefault(d.account_id, []).append(d)
    opening = sum(
        (opening_balance(own, anchors.get(account)) for account, own in per_account.items()),
        _ZERO,
    )
    return returns_of(day_totals(days), opening, first, last)


def returns_of(
    days: Sequence[DayTotal],
    opening: Decimal,
    first: date | None = None,
    last: date | None = None,
) -> list[DailyReturn]:
    """`daily_returns` of accounts whose days together are `days` (in day order) and whose
    balance before the first of them was `opening`."""
    if not days:
        return []
    moves = {d.day: d for d in days}
    start_day = max(days[0].day, first) if first else days[0].day
    # What the last weekend brought is the Monday's, even past the last activity.
    end_day = _weekday_on_or_after(days[-1].day)
    end_day = min(end_day, last) if last else end_day
    if start_day > end_day:
        return []
    # The combined balance at the end of the day before start_day.
    balance = opening + sum((d.balance_change for d in days if d.day < start_day), _ZERO)
    returns: list[DailyReturn] = []
    pending = (_ZERO, _ZERO, _ZERO)  # a weekend's moves, for the Monday after it
    day = start_day
    while day <= end_day:
        moved = moves.get(day)
        if moved is not None:
            pending = (
                pending[0] + moved.balance_change,
                pending[1] + moved.flows,
                pending[2] + moved.pnl,
            )
        if day.weekday() < _MONDAY_TO_FRIDAY:
            end = balance + pending[0]
            value = float((end - balance - pending[1]) / balance) if balance > 0 else None
            returns.append(DailyReturn(day, balance, end, pending[1], pending[2], value))
            balance, pending = end, (_ZERO, _ZERO, _ZERO)
        day += timedelta(days=1)
    return returns


@dataclass(frozen=True)
class CurvePoint:
    date: date
    balance: Decimal
    equity: Decimal | None
    growth: float
    drawdown: float


@dataclass(frozen=True)
class MaxDrawdown:
    percent: float
    amount: Decimal
    peak_date: date | None
    trough_date: date | None
    recovery_date: date | None
    recovery_days: int | None


def curve(returns: Sequence[DailyReturn]) -> list[CurvePoint]:
    """Each return day's balance, the growth of 1 compounded from the returns, and its fall from
    its running peak (the first return's day is the first peak, as empyrical counts it)."""
    points: list[CurvePoint] = []
    growth = 1.0
    peak: float | None = None
    for r in returns:
        if r.value is not None:
            growth *= 1.0 + r.value
            peak = growth if peak is None else max(peak, growth)
        drawdown = growth / peak - 1.0 if peak else 0.0
        points.append(CurvePoint(r.date, r.end_balance, None, growth, drawdown))
    return points


def max_drawdown(returns: Sequence[DailyReturn], points: Sequence[CurvePoint]) -> MaxDrawdown:
    counted = [(r, p) for r, p in zip(returns, points, strict=True) if r.value is not None]
    deepest = 0.0
    trough_index: int | None = None
    for i, (_, p) in enumerate(counted):
        if p.drawdown < deepest:
            deepest, trough_index = p.drawdown, i
    amount = _deepest_pnl_fall(returns)
    if trough_index is None:
        return MaxDrawdown(0.0, amount, None, None, None, None)
    peak_index = max(i for i, (_, p) in enumerate(counted[: trough_index + 1]) if p.drawdown == 0.0)
    peak_growth = counted[peak_index][1].growth
    peak_day = counted[peak_index][0].date
    recovered = next(
        (p.date for _, p in counted[trough_index + 1 :] if p.growth >= peak_growth), None
    )
    return MaxDrawdown(
        percent=deepest,
        amount=amount,
        peak_date=peak_day,
        trough_date=counted[trough_index][0].date,
        recovery_date=recovered,
        recovery_days=(recovered - peak_day).days if recovered else None,
    )


def _deepest_pnl_fall(returns: Sequence[DailyReturn]) -> Decimal:
    """The deepest fall of cumulative P&L (balance less flows) from its running peak."""
    cumulative = _ZERO
    peak = _ZERO
    deepest = _ZERO
    for r in returns:
        cumulative += r.end_balance - r.start_balance - r.net_flows
        peak = max(peak, cumulative)
        deepest = min(deepest, cumulative - peak)
    return deepest


@dataclass(frozen=True)
class Sharpe:
    value: float | None
    periods_per_year: int
    risk_free_rate: float
    observations: int


def sharpe(
    returns: Sequence[DailyReturn],
    risk_free_rate: float = 0.0,
    periods_per_year: int = PERIODS_PER_YEAR,
) -> Sharpe:
    """mean / std (ddof 1) of the excess daily returns, times sqrt(N)."""
    daily_rf = risk_free_rate / periods_per_year
    excess = [r.value - daily_rf for r in returns if r.value is not None]
    value: float | None = None
    if len(excess) >= 2:
        spread = statistics.stdev(excess)
        if spread > 0:
            value = statistics.fmean(excess) / spread * math.sqrt(periods_per_year)
    return Sharpe(value, periods_per_year, risk_free_rate, len(excess))
