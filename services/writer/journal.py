"""The journal's rules, pure: a position's fills into the journal rows they add up to, which
balance report an account keeps, and how a connection's syncs are counted per month."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime
from decimal import ROUND_HALF_EVEN, Decimal, localcontext
from typing import Literal

from services.shared.canonical import EXACT, AccountSnapshot, CanonicalBatch, Side

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
    same rows. A position with charges but no fill (yet) has no row.

    A position is IN fills (open/add) and OUT fills (partial or full closes). Entry and exit
    prices are volume-weighted; money is summed. A netting account's reversal (INOUT) closes
    what is open and opens the rest the other way: that second leg becomes its own journal row,
    keyed by the reversing fill, so each row describes one direction. Likewise a position that
    went flat and opens again (IBKR keys positions by instrument) starts a new row keyed by its
    first fill, so each round trip is its own row.

    A position's charges (cash movements that name it, such as an OANDA trade's daily
    financing) count in the row of the round trip open when they were booked: financing as
    swap, any other kind as fees. Sums are exact (a context wide enough for any bounded
    amount), never rounded.
    """
    with localcontext(EXACT):
        segments = _segments(position_key, fills)
        if not segments:
            return []
        _charge(segments, sorted(charges, key=lambda c: (c.executed_at, c.movement_key)))
        return [_aggregate(s, position_key) for s in segments]


# --- the balance ----------------------------------------------------------------------------


@dataclass(frozen=True)
class StoredBalance:
    """What an account's balance is now: the report it came from (the broker's `as_of`, when we
    received it), and the newest deal recorded for the account (this batch's included)."""

    as_of: datetime | None
    received_at: datetime | None
    newest_deal: datetime | None


def newest_snapshots(batches: Sequence[CanonicalBatch]) -> dict[uuid.UUID, CanonicalBatch]:
    """Per account, the batch whose balance report is the one to apply.

    The latest report wins, among those whose deals are not older than the newest deal any
    report of these batches carried (an older one is a stale copy re-sent late).
    """
    reports: dict[uuid.UUID, list[tuple[CanonicalBatch, AccountSnapshot]]] = {}
    for batch in batches:
        if batch.account is not None:
            reports.setdefault(batch.connection.account_id, []).append((batch, batch.account))
    newest = {}
    for account_id, candidates in reports.items():
        newest_deal = max(
            (report.deals_through for _, report in candidates if report.deals_through),
            default=None,
        )
        current = [(b, r) for b, r in candidates if _reflects(r, newest_deal)]
        newest[account_id] = max(current, key=lambda c: (c[1].as_of, c[0].received_at))[0]
    return newest


def balance_applies(stored: StoredBalance, report: AccountSnapshot, received_at: datetime) -> bool:
    """A newer report replaces the balance, unless its deals are older than deals already
    recorded for the account: that is an old report re-sent, and would roll the balance back."""
    newer = stored.as_of is None or (stored.as_of, stored.received_at or _NEVER) < (
        report.as_of,
        received_at,
    )
    return newer and _reflects(report, stored.newest_deal)


def _reflects(report: AccountSnapshot, newest_deal: datetime | None) -> bool:
    """Whether a report is at least as recent as the newest deal known (or cannot tell)."""
    if report.deals_through is None or newest_deal is None:
        return True
    return report.deals_through >= newest_deal


_NEVER = datetime.min.replace(tzinfo=UTC)


# --- syncs per month ------------------------------------------------------------------------


@dataclass(frozen=True)
class MonthlySyncs:
    """A connection's sync count of its latest month, and its latest sync."""

    month: date | None = None
    count: int = 0
    last_sync_at: datetime | None = None
    last_event_id: uuid.UUID | None = None


def month_of(moment: datetime) -> date:
    utc = moment.astimezone(UTC)
    return date(utc.year, utc.month, 1)


def count_syncs(stored: MonthlySyncs, synced: Sequence[tuple[datetime, uuid.UUID]]) -> MonthlySyncs:
    """The count after these newly recorded events (received at, event id), in any order.

    The events count toward the month of the latest of them; a newer month starts the count over;
    events of an older month than the one counted (stragglers) change nothing."""
    if not synced:
        return stored
    latest_at, latest_id = max(synced)
    month = month_of(latest_at)
    in_month = sum(1 for at, _ in synced if month_of(at) == month)
    if stored.month is None or month > stored.month:
        counted_month, count = month, in_month
    elif month == stored.month:
        counted_month, count = month, stored.count + in_month
    else:
        counted_month, count = stored.month, stored.count
    newest = stored.last_sync_at is None or latest_at >= stored.last_sync_at
    return MonthlySyncs(
        month=counted_month,
        count=count,
        last_sync_at=latest_at if newest else stored.last_sync_at,
        last_event_id=latest_id if newest else stored.last_event_id,
    )
