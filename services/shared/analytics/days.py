"""The daily rollup's rules, pure: which local day an instant belongs to, and one account's
closed trades and cash movements of one day folded into that day's summary (`summarize_day`).

The writer keeps these summaries (one row per account, time zone and day) and every figure of
the analytics is computed from them, so computing a day again from its journal rows gives the
same row whatever order or how late its events came."""

from __future__ import annotations

import uuid
import zoneinfo
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from functools import lru_cache

from services.shared.analytics.streaks import Runs, runs_of

_ZERO = Decimal(0)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# Money moved into or out of the account from outside (not a result of trading): these are the
# flows a time-weighted return is net of. Any other cash movement (a charge, interest, a
# dividend, financing not booked to a trade) is P&L of the day it is booked on. Credit is the
# broker's, not the account holder's money, and no part of the balance.
FLOW_KINDS = frozenset({"balance", "deposit", "withdrawal", "bonus"})
OUTSIDE_BALANCE_KINDS = frozenset({"credit"})

# Trade durations, in seconds: each bucket from its lower bound (inclusive) to the next one's.
DURATION_BOUNDS: tuple[tuple[str, int], ...] = (
    ("<1 min", 0),
    ("1-5 min", 60),
    ("5-15 min", 300),
    ("15 min-1 h", 900),
    ("1-4 h", 3600),
    ("4 h-1 d", 14400),
    ("1-7 d", 86400),
    (">7 d", 604800),
)


@lru_cache(maxsize=64)
def zone(name: str) -> zoneinfo.ZoneInfo:
    return zoneinfo.ZoneInfo(name)


def local_day(instant: datetime, time_zone: str) -> date:
    """The day `instant` falls on in `time_zone` (23:30 UTC is the next day at UTC+1)."""
    return instant.astimezone(zone(time_zone)).date()


def day_bounds(day: date, time_zone: str) -> tuple[datetime, datetime]:
    """The instants a local day starts at (inclusive) and ends at (exclusive), in UTC."""
    tz = zone(time_zone)
    start = datetime.combine(day, time(), tz).astimezone(UTC)
    end = datetime.combine(day + timedelta(days=1), time(), tz).astimezone(UTC)
    return start, end


def epoch_micros(instant: datetime) -> int:
    return (instant - _EPOCH) // timedelta(microseconds=1)


@dataclass(frozen=True)
class ClosedTrade:
    """A closed journal row, as much of it as the analytics read."""

    trade_id: str
    closed_at: datetime
    opened_at: datetime | None
    pnl: Decimal  # profit + commission + swap + fees


@dataclass(frozen=True)
class Movement:
    """An account-level cash movement (one booked to no trade)."""

    kind: str
    amount: Decimal


def trade_pnl(
    profit: Decimal | None, commission: Decimal | None, swap: Decimal | None, fees: Decimal | None
) -> Decimal:
    """A trade's P&L: profit + commission + swap + fees (a missing part is zero)."""
    return (profit or _ZERO) + (commission or _ZERO) + (swap or _ZERO) + (fees or _ZERO)


@dataclass(frozen=True)
class DaySummary:
    """One account's day: what the rollup row holds.

    `outcomes` are the day's wins and losses in close order (close time, then trade id), each
    its close time in epoch microseconds, positive for a win and negative for a loss: enough to
    merge several accounts' streaks in the order their trades closed; `runs` are what they come
    to for this account's streaks. `durations` are the closed trades' open-to-close
    microseconds, ascending."""

    account_id: uuid.UUID
    day: date
    trades: int
    wins: int
    losses: int
    gross_profit: Decimal
    gross_loss: Decimal
    largest_win: Decimal | None
    largest_loss: Decimal | None
    charges: Decimal
    flows: Decimal
    duration_buckets: tuple[int, ...]
    durations: tuple[int, ...]
    outcomes: tuple[int, ...]
    runs: Runs

    @property
    def breakevens(self) -> int:
        return self.trades - self.wins - self.losses

    @property
    def trade_pnl(self) -> Decimal:
        return self.gross_profit + self.gross_loss

    @property
    def balance_change(self) -> Decimal:
        """How the rebuilt balance moved this day: realized P&L, charges and flows."""
        return self.trade_pnl + self.charges + self.flows


def duration_bucket(micros: int) -> int:
    index = 0
    for i, (_, bound) in enumerate(DURATION_BOUNDS):
        if micros >= bound * 1_000_000:
            index = i
    return index


def summarize_day(
    account_id: uuid.UUID,
    day: date,
    trades: Iterable[ClosedTrade],
    movements: Iterable[Movement] = (),
) -> DaySummary | None:
    """The day's summary from all its closed trades and account-level movements, in any order;
    None for a day with neither (no rollup row)."""
    ordered = sorted(trades, key=lambda t: (t.closed_at, t.trade_id))
    booked = list(movements)
    if not ordered and not booked:
        return None
    wins = [t.pnl for t in ordered if t.pnl > 0]
    losses = [t.pnl for t in ordered if t.pnl < 0]
    durations = sorted(
        epoch_micros(t.closed_at) - epoch_micros(t.opened_at)
        for t in ordered
        if t.opened_at is not None
    )
    buckets = [0] * len(DURATION_BOUNDS)
    for micros in durations:
        buckets[duration_bucket(micros)] += 1
    outcomes = tuple(
        epoch_micros(t.closed_at) if t.pnl > 0 else -epoch_micros(t.closed_at)
        for t in ordered
        if t.pnl != 0
    )
    return DaySummary(
        account_id=account_id,
        day=day,
        trades=len(ordered),
        wins=len(wins),
        losses=len(losses),
        gross_profit=sum(wins, _ZERO),
        gross_loss=sum(losses, _ZERO),
        largest_win=max(wins, default=None),
        largest_loss=min(losses, default=None),
        charges=sum(
            (m.amount for m in booked if m.kind not in FLOW_KINDS | OUTSIDE_BALANCE_KINDS), _ZERO
        ),
        flows=sum((m.amount for m in booked if m.kind in FLOW_KINDS), _ZERO),
        duration_buckets=tuple(buckets),
        durations=tuple(durations),
        outcomes=outcomes,
        runs=runs_of(outcomes),
    )


def summarize_days(
    account_id: uuid.UUID,
    time_zone: str,
    trades: Iterable[ClosedTrade],
    movements: Iterable[tuple[datetime, Movement]] = (),
) -> list[DaySummary]:
    """Every day of one account's trades and movements in `time_zone`, in day order: what
    computing its rollup from scratch gives."""
    trades_by_day: dict[date, list[ClosedTrade]] = {}
    for trade in trades:
        trades_by_day.setdefault(local_day(trade.closed_at, time_zone), []).append(trade)
    movements_by_day: dict[date, list[Movement]] = {}
    for at, movement in movements:
        movements_by_day.setdefault(local_day(at, time_zone), []).append(movement)
    summaries = (
        summarize_day(account_id, day, trades_by_day.get(day, ()), movements_by_day.get(day, ()))
        for day in sorted(trades_by_day.keys() | movements_by_day.keys())
    )
    return [s for s in summaries if s is not None]
