"""The journal's rules, pure: a position's fills into the journal rows they add up to, which
balance report an account keeps, and how a connection's syncs are counted per month."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import ROUND_HALF_EVEN, Decimal, localcontext
from typing import Any, Literal, NamedTuple, Protocol

import orjson

from services.shared.canonical import EXACT, AccountSnapshot, CanonicalBatch, Side

_PRICE_QUANTUM = Decimal("1e-10")
_ZERO = Decimal(0)


class FoldedFill(Protocol):
    """What folding reads of a fill: a canonical `Fill` as delivered, or a `PositionFill` read
    back from the database, each as it is (no copy made per fill)."""

    @property
    def fill_key(self) -> str: ...
    @property
    def symbol(self) -> str: ...
    @property
    def side(self) -> Side: ...
    @property
    def entry(self) -> Literal["in", "out", "inout", "out_by"]: ...
    @property
    def volume(self) -> Decimal: ...
    @property
    def price(self) -> Decimal: ...
    @property
    def profit(self) -> Decimal: ...
    @property
    def commission(self) -> Decimal: ...
    @property
    def swap(self) -> Decimal: ...
    @property
    def fee(self) -> Decimal: ...
    @property
    def executed_at(self) -> datetime: ...
    @property
    def broker_ref(self) -> str: ...


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


class TradeAggregate(NamedTuple):
    """One journal row's worth of numbers (a named tuple: made for every row a batch writes,
    in a fraction of a frozen dataclass's time)."""

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
    """One round trip's running totals, its fills folded in in order (`_order`): each fill adds to
    its volumes and notionals (`_take_in`, `_take_out`) and to its money (`_take_money`), so a
    row is its totals, never a list of fills kept to be added up again."""

    trade_id: str
    side: Side | None = None
    # Of its first fill (the earliest in order, opening or closing).
    symbol: str | None = None
    first_side: Side | None = None
    first_at: datetime | None = None
    # Of its first opening fill, and of its latest closing fill.
    opened_at: datetime | None = None
    last_out_at: datetime | None = None
    in_volume: Decimal = _ZERO
    in_notional: Decimal = _ZERO
    out_volume: Decimal = _ZERO
    out_notional: Decimal = _ZERO
    profit: Decimal = _ZERO
    commission: Decimal = _ZERO
    swap: Decimal = _ZERO
    fee: Decimal = _ZERO
    # Fills opening or closing it (a fill's key appears once in a position).
    fills: int = 0


def _opposite(side: Side) -> Side:
    return "sell" if side == "buy" else "buy"


def _vwap(notional: Decimal, volume: Decimal) -> Decimal | None:
    if volume == 0:
        return None
    return (notional / volume).quantize(_PRICE_QUANTUM, rounding=ROUND_HALF_EVEN).normalize()


def _order(fill: FoldedFill) -> tuple[datetime, int, str]:
    ref = int(fill.broker_ref) if fill.broker_ref.isdigit() else 0
    return (fill.executed_at, ref, fill.fill_key)


def _first(segment: _Segment, fill: FoldedFill) -> None:
    if segment.fills == 0:
        segment.symbol, segment.first_side, segment.first_at = (
            fill.symbol,
            fill.side,
            fill.executed_at,
        )
    segment.fills += 1


def _take_in(segment: _Segment, fill: FoldedFill, volume: Decimal) -> None:
    _first(segment, fill)
    if segment.opened_at is None:
        segment.opened_at = fill.executed_at
    segment.in_volume += volume
    segment.in_notional += volume * fill.price


def _take_out(segment: _Segment, fill: FoldedFill, volume: Decimal) -> None:
    _first(segment, fill)
    segment.last_out_at = fill.executed_at
    segment.out_volume += volume
    segment.out_notional += volume * fill.price


def _take_money(segment: _Segment, fill: FoldedFill) -> None:
    segment.profit += fill.profit
    segment.commission += fill.commission
    segment.swap += fill.swap
    segment.fee += fill.fee


@dataclass(frozen=True)
class PositionFold:
    """How far a position's fills are folded: the last fill (in `_order`), the volume left open,
    and the running totals of its latest round trip. Earlier round trips are final: a fill later
    than `last` can only add to the latest one or open new ones."""

    position_key: str
    last: tuple[datetime, int, str]
    open_volume: Decimal
    segment: _Segment

    def extends_to(self, fills: Iterable[FoldedFill]) -> bool:
        """Whether every one of these fills comes after the last one folded, so folding them in
        gives what folding all the position's fills again would."""
        return all(_order(f) > self.last for f in fills)

    def encoded(self) -> str:
        """As position_folds stores it: JSON, amounts as text (exactly), times in ISO 8601."""
        at, ref, key = self.last
        stored = {
            "last": [at, ref, key],
            "open_volume": self.open_volume,
            "segment": vars(self.segment),
        }
        # orjson writes times as isoformat() does, and each Decimal through `str`.
        return orjson.dumps(stored, default=str).decode()

    @classmethod
    def decoded(cls, position_key: str, text: str | bytes) -> PositionFold:
        """The fold `encoded` stored."""
        stored = orjson.loads(text)
        segment: dict[str, Any] = stored["segment"]
        for name in _SEGMENT_TIMES:
            if (value := segment[name]) is not None:
                segment[name] = datetime.fromisoformat(value)
        for name in _SEGMENT_AMOUNTS:
            segment[name] = Decimal(segment[name])
        at, ref, key = stored["last"]
        return cls(
            position_key,
            (datetime.fromisoformat(at), ref, key),
            Decimal(stored["open_volume"]),
            _Segment(**segment),
        )


_SEGMENT_TIMES = ("first_at", "opened_at", "last_out_at")
_SEGMENT_AMOUNTS = (
    "in_volume",
    "in_notional",
    "out_volume",
    "out_notional",
    "profit",
    "commission",
    "swap",
    "fee",
)


def _fold(
    position_key: str, fills: Iterable[FoldedFill], since: PositionFold | None
) -> tuple[list[_Segment], PositionFold | None]:
    """The round trips these fills add to or open, folded in order from `since` (or from
    nothing), and where the fold then stands."""
    if since is None:
        current, open_volume, last = _Segment(position_key), _ZERO, None
    else:
        current, open_volume, last = _Segment(**vars(since.segment)), since.open_volume, since.last
    segments = [current]
    for fill in sorted(fills, key=_order):
        last = _order(fill)
        if fill.entry == "in":
            if open_volume <= 0 and current.fills:
                # Fully closed, now opened again: a new round trip, not an add to a closed row.
                current = _Segment(f"{position_key}:{fill.broker_ref}")
                segments.append(current)
            current.side = current.side or fill.side
            _take_in(current, fill, fill.volume)
            _take_money(current, fill)
            open_volume += fill.volume
        elif fill.entry in ("out", "out_by"):
            current.side = current.side or _opposite(fill.side)
            _take_out(current, fill, fill.volume)
            _take_money(current, fill)
            # Closes of what was opened before the history we have leave nothing open, not less
            # than nothing: a later opening starts a round trip of its own.
            open_volume = max(open_volume - fill.volume, _ZERO)
        else:  # inout: close what is open, open the remainder the other way
            closing = min(max(open_volume, _ZERO), fill.volume)
            reopening = fill.volume - closing
            had_position = bool(current.fills)
            if closing > 0:
                _take_out(current, fill, closing)
            if had_position:
                _take_money(current, fill)  # the reversal's P&L belongs to what it closed
            open_volume -= closing
            if reopening > 0:
                current = _Segment(f"{position_key}:{fill.broker_ref}", side=fill.side)
                _take_in(current, fill, reopening)
                if not had_position:
                    _take_money(current, fill)
                segments.append(current)
                open_volume = reopening
    fold = None if last is None else PositionFold(position_key, last, open_volume, current)
    return [s for s in segments if s.fills], fold


def _charge(
    segments: Sequence[_Segment], charges: Iterable[PositionCharge]
) -> list[list[PositionCharge]]:
    """Each charge into the round trip open when it was booked: the latest one opened at or
    before it (a charge older than every fill belongs to the first)."""
    owned: list[list[PositionCharge]] = [[] for _ in segments]
    for charge in charges:
        owner = 0
        for index, segment in enumerate(segments[1:], start=1):
            assert segment.first_at is not None  # a segment has fills
            if segment.first_at <= charge.executed_at:
                owner = index
        owned[owner].append(charge)
    return owned


def _charged(charges: Sequence[PositionCharge], swap: bool) -> Decimal:
    return sum((c.amount for c in charges if (c.kind == "financing") == swap), _ZERO)


def _aggregate(
    segment: _Segment, position_key: str, charges: Sequence[PositionCharge] = ()
) -> TradeAggregate:
    # Only closes seen (the opening fills predate the sync): the size is what was closed.
    volume = segment.in_volume if segment.in_volume > 0 else segment.out_volume
    closed = segment.out_volume > 0 and segment.out_volume >= volume
    assert segment.symbol is not None and segment.first_side is not None  # it has fills
    return TradeAggregate(
        trade_id=segment.trade_id,
        position_key=position_key,
        symbol=segment.symbol,
        side=segment.side or segment.first_side,
        volume=volume,
        closed_volume=segment.out_volume,
        entry_price=_vwap(segment.in_notional, segment.in_volume),
        exit_price=_vwap(segment.out_notional, segment.out_volume),
        opened_at=segment.opened_at,
        closed_at=segment.last_out_at if closed else None,
        profit=segment.profit,
        commission=segment.commission,
        swap=segment.swap + _charged(charges, swap=True) if charges else segment.swap,
        fees=segment.fee + _charged(charges, swap=False) if charges else segment.fee,
        status="closed" if closed else "open",
        fill_count=segment.fills,
    )


def aggregate_position(
    position_key: str, fills: Iterable[FoldedFill], charges: Iterable[PositionCharge] = ()
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
    return fold_position(position_key, fills, charges=charges)[0]


def fold_position(
    position_key: str,
    fills: Iterable[FoldedFill],
    since: PositionFold | None = None,
    charges: Iterable[PositionCharge] = (),
) -> tuple[list[TradeAggregate], PositionFold | None]:
    """The journal rows these fills change, and where the position's fold then stands.

    From nothing (`since` None), `fills` are all the position's fills and the rows are all its
    rows (`aggregate_position`). From a fold, `fills` are fills that came after it
    (`PositionFold.extends_to`) and the rows are those of the round trips they added to or
    opened: the same rows folding every fill again gives for them, while the earlier rows stay
    as they are. Charges are only taken with every fill, from nothing."""
    with localcontext(EXACT):
        segments, fold = _fold(position_key, fills, since)
        if not segments:
            return [], fold
        charged = _charge(segments, sorted(charges, key=lambda c: (c.executed_at, c.movement_key)))
        rows = [_aggregate(s, position_key, c) for s, c in zip(segments, charged, strict=True)]
        return rows, fold


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
