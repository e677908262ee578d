"""Pure: a position's fills, in any order, into the journal rows they add up to.

A position is IN fills (open/add) and OUT fills (partial or full closes). Entry and exit prices
are volume-weighted; money is summed. A netting account's reversal (INOUT) closes what is open
and opens the rest the other way: that second leg becomes its own journal row, keyed by the
reversing fill, so each row describes one direction. Likewise a position that went flat and
opens again (IBKR keys positions by instrument) starts a new row keyed by its first fill, so each
round trip is its own row.

A position's charges (cash movements that name it, such as an OANDA trade's daily financing)
count in the row of the round trip open when they were booked: financing as swap, any other
kind as fees. Sums are exact (a context wide enough for any bounded amount), never rounded.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from decimal import ROUND_HALF_EVEN, Decimal, localcontext
from typing import Literal

from services.shared.canonical import EXACT

Side = Literal["buy", "sell"]
_PRICE_QUANTUM = Decimal("1e-10")
_ZERO = Decimal(0)


@dataclass(frozen=True)
class PositionFill:
    fill_key: str
    position_key: str
    symbol: str
    side: Side
    entry: Literal["in", "out", "inout", "out_by"]
    volume: Decimal
    price: Decimal
    profit: Decimal
    commission: Decimal
    swap: Decimal
    fee: Decimal
    executed_at: datetime
    broker_ref: str


@dataclass(frozen=True)
class PositionCharge:
    """Money booked against a position that is not an execution (a daily financing)."""

    movement_key: str
    position_key: str
    kind: str
    amount: Decimal
    executed_at: datetime


@dataclass(frozen=True)
class TradeAggregate:
    """One journal row's worth of numbers."""

    trade_id: str
    position_key: str
    symbol: str
    side: Side
    volume: Decimal
    closed_volume: Decimal
    entry_price: Decimal | None
    exit_price: Decimal | None
    opened_at: datetime | None
    closed_at: datetime | None
    profit: Decimal
    commission: Decimal
    swap: Decimal
    fees: Decimal
    status: Literal["open", "closed"]
    fill_count: int


@dataclass
class _Segment:
    trade_id: str
    side: Side | None = None
    ins: list[PositionFill] = field(default_factory=list)
    outs: list[PositionFill] = field(default_factory=list)
    money: list[PositionFill] = field(default_factory=list)
    charges: list[PositionCharge] = field(default_factory=list)


def _opposite(side: Side) -> Side:
    return "sell" if side == "buy" else "buy"


def _vwap(fills: Sequence[PositionFill]) -> Decimal | None:
    volume = sum((f.volume for f in fills), _ZERO)
    if volume == 0:
        return None
    notional = sum((f.volume * f.price for f in fills), _ZERO)
    return (notional / volume).quantize(_PRICE_QUANTUM, rounding=ROUND_HALF_EVEN).normalize()


def _order(fill: PositionFill) -> tuple[datetime, int, str]:
    ref = int(fill.broker_ref) if fill.broker_ref.isdigit() else 0
    return (fill.executed_at, ref, fill.fill_key)


def _no_money(fill: PositionFill, volume: Decimal) -> PositionFill:
    return replace(fill, volume=volume, profit=_ZERO, commission=_ZERO, swap=_ZERO, fee=_ZERO)


def _segments(position_key: str, fills: Iterable[PositionFill]) -> list[_Segment]:
    current = _Segment(position_key)
    segments = [current]
    open_volume = _ZERO
    for fill in sorted(fills, key=_order):
        if fill.entry == "in":
            if open_volume <= 0 and (current.ins or current.outs):
                # Fully closed, now opened again: a new round trip, not an add to a closed row.
                current = _Segment(f"{position_key}:{fill.broker_ref}")
                segments.append(current)
            current.side = current.side or fill.side
            current.ins.append(fill)
            current.money.append(fill)
            open_volume += fill.volume
        elif fill.entry in ("out", "out_by"):
            current.side = current.side or _opposite(fill.side)
            current.outs.append(fill)
            current.money.append(fill)
            # Closes of what was opened before the history we have leave nothing open, not less
            # than nothing: a later opening starts a round trip of its own.
            open_volume = max(open_volume - fill.volume, _ZERO)
        else:  # inout: close what is open, open the remainder the other way
            closing = min(max(open_volume, _ZERO), fill.volume)
            reopening = fill.volume - closing
            had_position = bool(current.ins or current.outs)
            if closing > 0:
                current.outs.append(_no_money(fill, closing))
            if had_position:
                current.money.append(fill)  # the reversal's P&L belongs to what it closed
            open_volume -= closing
            if reopening > 0:
                current = _Segment(f"{position_key}:{fill.broker_ref}", side=fill.side)
                current.ins.append(_no_money(fill, reopening))
                if not had_position:
                    current.money.append(fill)
                segments.append(current)
                open_volume = reopening
    return [s for s in segments if s.ins or s.outs]


def _opened_at(segment: _Segment) -> datetime:
    return min(f.executed_at for f in segment.ins + segment.outs)


def _charge(segments: Sequence[_Segment], charges: Iterable[PositionCharge]) -> None:
    """Each charge into the round trip open when it was booked: the latest one opened at or
    before it (a charge older than every fill belongs to the first)."""
    for charge in charges:
        owner = segments[0]
        for segment in segments[1:]:
            if _opened_at(segment) <= charge.executed_at:
                owner = segment
        owner.charges.append(charge)


def _charged(segment: _Segment, swap: bool) -> Decimal:
    return sum((c.amount for c in segment.charges if (c.kind == "financing") == swap), _ZERO)


def _aggregate(segment: _Segment, position_key: str) -> TradeAggregate:
    ins, outs, money = segment.ins, segment.outs, segment.money
    every = ins + outs
    in_volume = sum((f.volume for f in ins), _ZERO)
    out_volume = sum((f.volume for f in outs), _ZERO)
    # Only closes seen (the opening fills predate the sync): the size is what was closed.
    volume = in_volume if in_volume > 0 else out_volume
    closed = out_volume > 0 and out_volume >= volume
    first = min(every, key=_order)
    return TradeAggregate(
        trade_id=segment.trade_id,
        position_key=position_key,
        symbol=first.symbol,
        side=segment.side or first.side,
        volume=volume,
        closed_volume=out_volume,
        entry_price=_vwap(ins),
        exit_price=_vwap(outs),
        opened_at=min(ins, key=_order).executed_at if ins else None,
        closed_at=max(outs, key=_order).executed_at if closed else None,
        profit=sum((f.profit for f in money), _ZERO),
        commission=sum((f.commission for f in money), _ZERO),
        swap=sum((f.swap for f in money), _ZERO) + _charged(segment, swap=True),
        fees=sum((f.fee for f in money), _ZERO) + _charged(segment, swap=False),
        status="closed" if closed else "open",
        fill_count=len({f.fill_key for f in every}),
    )


def aggregate_position(
    position_key: str, fills: Iterable[PositionFill], charges: Iterable[PositionCharge] = ()
) -> list[TradeAggregate]:
    """Every journal row of one position; the same fills and charges in any order give the
    same rows. A position with charges but no fill (yet) has no row."""
    with localcontext(EXACT):
        segments = _segments(position_key, fills)
        if not segments:
            return []
        _charge(segments, sorted(charges, key=lambda c: (c.executed_at, c.movement_key)))
        return [_aggregate(s, position_key) for s in segments]
