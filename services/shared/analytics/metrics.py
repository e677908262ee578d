"""The analytics' figures, pure: from the days' summaries (`days.DaySummary`, one zone) to the
headline figures, the time-weighted daily returns and the balance curve, max drawdown, Sharpe,
durations and the P&L calendar, by the definitions `GET /v1/analytics` states."""

from __future__ import annotations

import math
import re
import statistics
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal
from itertools import accumulate, chain
from typing import Literal

from services.shared.analytics.days import DURATION_BOUNDS, DaySummary

PERIODS_PER_YEAR = 252  # FX/CFD: weekday returns
_ZERO = Decimal(0)
_MONDAY_TO_FRIDAY = 5


@dataclass(frozen=True)
class Streak:
    kind: Literal["win", "loss"] | None
    trades: int


@dataclass(frozen=True)
class Streaks:
    longest_win: int
    longest_loss: int
    current: Streak


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


_WIN = b"\x01"
_WINS = re.compile(b"\x01+")
_LOSSES = re.compile(b"\x00+")


def streaks(outcomes: Iterable[int]) -> Streaks:
    """Longest and current runs of wins (positive) and losses (negative), in the order given."""
    # One byte per outcome (1 a win, 0 a loss), the runs found by regular expressions: every
    # step runs in C, since there is one per trade.
    signs = bytes(map((0).__lt__, outcomes))
    last = signs[-1:]
    current = (
        Streak("win" if last == _WIN else "loss", len(signs) - len(signs.rstrip(last)))
        if last
        else Streak(None, 0)
    )
    return Streaks(
        longest_win=max(map(len, _WINS.findall(signs)), default=0),
        longest_loss=max(map(len, _LOSSES.findall(signs)), default=0),
        current=current,
    )


@dataclass(frozen=True)
class Tally:
    """One account's days added up: what its headline, and any group's it is in, is made of.
    `outcomes` are its wins and losses in close order (see DaySummary)."""

    account_id: uuid.UUID
    trades: int
    wins: int
    losses: int
    gross_profit: Decimal
    gross_loss: Decimal
    largest_win: Decimal | None
    largest_loss: Decimal | None
    outcomes: list[int]


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
        outcomes=list(chain.from_iterable(d.outcomes for d in days)),
    )


def tallies(days: Sequence[DaySummary]) -> list[Tally]:
    """Each account's tally, accounts by id."""
    per_account: dict[uuid.UUID, list[DaySummary]] = {}
    for d in sorted(days, key=lambda d: (d.account_id, d.day)):
        per_account.setdefault(d.account_id, []).append(d)
    return [tally(account, per_account[account]) for account in sorted(per_account)]


def _merged_outcomes(parts: Sequence[Tally]) -> list[int]:
    """Every win and loss in close order: close time, then account, then trade id."""
    ordered = sorted(parts, key=lambda t: t.account_id)
    if len(ordered) == 1:
        return ordered[0].outcomes
    every = list(chain.from_iterable(t.outcomes for t in ordered))
    # Each account's run is in close order already; a stable sort by close time keeps equal
    # times in account order.
    every.sort(key=abs)
    return every


def headline(days: Sequence[DaySummary]) -> Headline:
    """The headline figures of these days' trades."""
    return combined_headline(tallies(days))


def combined_headline(parts: Sequence[Tally]) -> Headline:
    """The headline figures of these accounts' tallies together."""
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
        streaks=streaks(_merged_outcomes(parts)),
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


def durations(days: Sequence[DaySummary]) -> Durations:
    columns = zip(*(d.duration_buckets for d in days), strict=True)
    counts = [sum(column) for column in columns] or [0] * len(DURATION_BOUNDS)
    uppers: list[int | None] = [bound for _, bound in DURATION_BOUNDS[1:]]
    uppers.append(None)
    every = sorted(chain.from_iterable(d.durations for d in days))
    return Durations(
        buckets=tuple(
            DurationBucket(label, lower, upper, count)
            for (label, lower), upper, count in zip(DURATION_BOUNDS, uppers, counts, strict=True)
        ),
        median_seconds=_median(every) / 1_000_000 if every else None,
    )


def _median(ordered: Sequence[int]) -> float:
    middle = len(ordered) // 2
    if len(ordered) % 2:
        return float(ordered[middle])
    return (ordered[middle - 1] + ordered[middle]) / 2


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


def calendar(days: Sequence[DaySummary]) -> Calendar:
    daily: dict[date, tuple[Decimal, int]] = {}
    for d in days:
        if d.trades:
            pnl, count = daily.get(d.day, (_ZERO, 0))
            daily[d.day] = (pnl + d.trade_pnl, count + d.trades)
    weekly: dict[date, tuple[Decimal, int]] = {}
    for day, (pnl, count) in sorted(daily.items()):
        monday = day - timedelta(days=day.weekday())
        week_pnl, week_count = weekly.get(monday, (_ZERO, 0))
        weekly[monday] = (week_pnl + pnl, week_count + count)
    return Calendar(
        daily=tuple(CalendarDay(day, pnl, n) for day, (pnl, n) in sorted(daily.items())),
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


def _balances(
    days: Sequence[DaySummary], anchor: Anchor | None
) -> tuple[Decimal, list[tuple[date, Decimal, DaySummary]]]:
    """One account's balance before its first day and at the end of each of its days: the
    changes summed from zero, or placed so the anchor's day ends at the reported balance."""
    ordered = sorted(days, key=lambda d: d.day)
    ends = list(accumulate(d.balance_change for d in ordered))
    opening = _ZERO
    if anchor is not None:
        through_anchor = sum((d.balance_change for d in ordered if d.day <= anchor.day), _ZERO)
        opening = anchor.balance - through_anchor
    return opening, [(d.day, opening + e, d) for d, e in zip(ordered, ends, strict=True)]


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
    if not per_account:
        return []
    opening = _ZERO
    moves: dict[date, tuple[Decimal, Decimal, Decimal]] = {}  # balance change, flows, pnl
    for account_id, account_days in per_account.items():
        start, points = _balances(account_days, anchors.get(account_id))
        opening += start
        for day, _, summary in points:
            change, flows, pnl = moves.get(day, (_ZERO, _ZERO, _ZERO))
            moves[day] = (
                change + summary.balance_change,
                flows + summary.flows,
                pnl + summary.trade_pnl + summary.charges,
            )
    active = sorted(moves)
    start_day = max(active[0], first) if first else active[0]
    # What the last weekend brought is the Monday's, even past the last activity.
    end_day = _weekday_on_or_after(active[-1])
    end_day = min(end_day, last) if last else end_day
    if start_day > end_day:
        return []
    # The combined balance at the end of the day before start_day.
    balance = opening + sum((moves[d][0] for d in active if d < start_day), _ZERO)
    returns: list[DailyReturn] = []
    pending = (_ZERO, _ZERO, _ZERO)  # a weekend's moves, for the Monday after it
    day = start_day
    while day <= end_day:
        change, flows, pnl = moves.get(day, (_ZERO, _ZERO, _ZERO))
        pending = (pending[0] + change, pending[1] + flows, pending[2] + pnl)
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
