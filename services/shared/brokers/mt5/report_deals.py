"""What a history report says about its account and its deals: the account line read, and each
deal row's position worked out from the report's tables, or the reason it cannot be."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, InvalidOperation
from itertools import combinations
from typing import Any, Literal

from services.shared.brokers.mt5.report_file import ReportFile, ReportRow, UnreadableReport

MarginMode = Literal["hedging", "netting"]
# The Deals table's columns, as the payload names them.
DEAL_COLUMNS: Mapping[str, str] = {
    "Time": "time",
    "Deal": "deal",
    "Symbol": "symbol",
    "Type": "type",
    "Direction": "direction",
    "Volume": "volume",
    "Price": "price",
    "Order": "order",
    "Commission": "commission",
    "Fee": "fee",
    "Swap": "swap",
    "Profit": "profit",
    "Balance": "balance",
    "Comment": "comment",
}
_MARGIN_MODES: Mapping[str, MarginMode] = {
    "hedge": "hedging",
    "hedging": "hedging",
    "netting": "netting",
    "exchange": "netting",  # exchange accounts net positions per symbol
}
_TRADE_MODES = ("demo", "real", "contest")
_LEVERAGE = re.compile(r"^1\s*:\s*\d+$")
_ACCOUNT = re.compile(r"^(\d{1,20})\s*\((.*)\)\s*$")
_TIME_FORMATS = ("%Y.%m.%d %H:%M:%S", "%Y.%m.%d %H:%M")
# A position's closes are looked for among at most this many deals (2^N subsets are tried).
_MAX_CLOSE_CANDIDATES = 12


@dataclass(frozen=True)
class ReportAccount:
    """The header's account line: `login (currency, server, demo|real, Hedge|Netting)`, or the
    older `login (currency, 1:leverage, server, demo|real)`."""

    login: int
    server: str | None
    currency: str | None
    trade_mode: str | None
    margin_mode: MarginMode | None
    company: str | None
    name: str | None


@dataclass(frozen=True)
class DealRow:
    """One row of the Deals table as the payload carries it: its cells, and its position (None
    for balance operations), or why the report cannot say which position it belongs to."""

    row: int
    cells: Mapping[str, str]
    position: int | None = None
    position_unknown: str | None = None

    def item(self) -> dict[str, Any]:
        return {"row": self.row, **self.cells} | {
            "position": self.position,
            "position_unknown": self.position_unknown,
        }


@dataclass(frozen=True)
class ReportDeals:
    account: ReportAccount
    deals: tuple[DealRow, ...]


def report_account(report: ReportFile) -> ReportAccount:
    """The account the report is of; UnreadableReport if its header names none."""
    line = report.header.get("Account", "")
    match = _ACCOUNT.match(line)
    if match is None:
        raise UnreadableReport(f"the report's header names no account login (Account: {line!r})")
    parts = [p.strip() for p in match.group(2).split(",") if p.strip()]
    currency = parts.pop(0) if parts else None
    margin_mode = _MARGIN_MODES.get(parts[-1].lower()) if parts else None
    if margin_mode is not None:
        parts.pop()
    trade_mode = None
    rest = []
    for part in parts:
        if part.lower() in _TRADE_MODES and trade_mode is None:
            trade_mode = part.lower()
        elif not _LEVERAGE.match(part):
            rest.append(part)
    return ReportAccount(
        login=int(match.group(1)),
        server=rest[0] if len(rest) == 1 else None,
        currency=currency,
        trade_mode=trade_mode,
        margin_mode=margin_mode,
        company=report.header.get("Company") or None,
        name=report.header.get("Name") or None,
    )


def report_deals(report: ReportFile, margin_mode: MarginMode | None = None) -> ReportDeals:
    """Every row of the Deals table that names a deal (not its totals), with its position.

    `margin_mode` overrides the header's (an older report does not say)."""
    account = report_account(report)
    rows = [
        (row, {key: row.get(column) for column, key in DEAL_COLUMNS.items()})
        for row in report.tables["Deals"].rows
        if row.get("Deal") or row.get("Time")
    ]
    trades = [t for row, cells in rows if (t := _trade(row.number, cells)) is not None]
    closed = [p for row in _table(report, "Positions") if (p := _closed(row)) is not None]
    still_open = [p for row in _table(report, "Open Positions") if (p := _open(row)) is not None]
    mode = margin_mode or account.margin_mode
    hedging = _hedging(trades, closed, still_open) if mode != "netting" else {}
    netting = _netting(trades, closed + still_open) if mode != "hedging" else {}
    deals = []
    for row, cells in rows:
        if mode == "hedging":
            found = hedging.get(row.number)
        elif mode == "netting":
            found = netting.get(row.number)
        else:
            found = _agreed(hedging.get(row.number), netting.get(row.number))
        position, unknown = found if found is not None else (None, None)
        deals.append(DealRow(row.number, cells, position, unknown))
    return ReportDeals(account, tuple(deals))


def _agreed(hedging: _Found | None, netting: _Found | None) -> _Found | None:
    if hedging is None or netting is None or hedging == netting:
        return hedging or netting
    return (
        None,
        "the report does not say whether the account is hedging or netting, and the two read "
        f"this deal differently (position {_describe(hedging)} or {_describe(netting)}): "
        "pass --margin-mode",
    )


def _describe(found: _Found) -> str:
    return str(found[0]) if found[0] is not None else "unknown"


def _table(report: ReportFile, title: str) -> Sequence[ReportRow]:
    table = report.tables.get(title)
    return table.rows if table is not None else ()


# --- cells -----------------------------------------------------------------------------------


def report_number(text: str) -> Decimal:
    """A number as the report writes it: spaces group thousands (`10 000.00`)."""
    cleaned = re.sub(r"[\s\u00a0\u2009\u202f]", "", text)
    try:
        value = Decimal(cleaned)
    except InvalidOperation:
        raise ValueError(f"{text!r} is not a number") from None
    if not value.is_finite():
        raise ValueError(f"{text!r} is not a finite number")
    return value


def report_time(text: str) -> datetime:
    """A report time (`2024.01.09 10:15:20`), naive: the server's wall clock."""
    for form in _TIME_FORMATS:
        try:
            return datetime.strptime(text.strip(), form)
        except ValueError:
            continue
    raise ValueError(f"{text!r} is not a time in the form YYYY.MM.DD HH:MM:SS")


# The report's trade deal types and directions (the Deals table's Type and Direction).
TRADE_SIDES: Mapping[str, Literal["buy", "sell"]] = {"buy": "buy", "sell": "sell"}
DIRECTIONS: Mapping[str, int] = {
    "in": 0,
    "out": 1,
    "in/out": 2,
    "inout": 2,
    "out by": 3,
    "out_by": 3,
}


@dataclass(frozen=True)
class _Trade:
    row: int
    time: datetime
    symbol: str
    side: str
    entry: int
    volume: Decimal
    price: Decimal
    order: int
    profit: Decimal


@dataclass(frozen=True)
class _Position:
    id: int
    symbol: str
    side: str
    opened: datetime
    closed: datetime | None = None
    volume: Decimal | None = None
    close_price: Decimal | None = None
    profit: Decimal | None = None


_Found = tuple[int | None, str | None]


def _trade(row: int, cells: Mapping[str, str]) -> _Trade | None:
    """A buy or sell deal, read as far as working out its position needs; None for anything
    else (balance operations, rows whose cells do not read: the mapper says why)."""
    side = TRADE_SIDES.get(cells["type"].lower())
    entry = DIRECTIONS.get(cells["direction"].lower())
    if side is None or entry is None:
        return None
    try:
        return _Trade(
            row=row,
            time=report_time(cells["time"]),
            symbol=cells["symbol"],
            side=side,
            entry=entry,
            volume=report_number(cells["volume"]),
            price=report_number(cells["price"]),
            order=int(cells["order"] or 0),
            profit=report_number(cells["profit"] or "0"),
        )
    except ValueError:
        return None


def _closed(row: ReportRow) -> _Position | None:
    try:
        volume = row.get("Volume")
        return _Position(
            id=int(row.get("Position")),
            symbol=row.get("Symbol"),
            side=row.get("Type").lower(),
            opened=report_time(row.get("Time")),
            closed=report_time(row.get("Time 2")),
            # "closed / opened" volumes are not a total to add closes up to
            volume=report_number(volume) if "/" not in volume else None,
            close_price=report_number(row.get("Price 2")),
            profit=report_number(row.get("Profit") or "0"),
        )
    except ValueError:
        return None


def _open(row: ReportRow) -> _Position | None:
    try:
        return _Position(
            id=int(row.get("Position")),
            symbol=row.get("Symbol"),
            side=row.get("Type").lower(),
            opened=report_time(row.get("Time")),
        )
    except ValueError:
        return None


# --- hedging: one position per opening order ---------------------------------------------------


def _hedging(
    trades: Sequence[_Trade], closed: Sequence[_Position], still_open: Sequence[_Position]
) -> dict[int, _Found]:
    """An IN deal's position is its order (a position's identifier is the ticket of the order
    that opened it, and on a hedging account every such order opens its own). An OUT deal is
    the close of the Positions row it, alone, accounts for: its time, price, volume and profit
    are the row's close; or the row's closes add up to exactly these deals (partial closes)
    and no other row could have any of them. Anything else cannot be told from the report."""
    found: dict[int, _Found] = {}
    outs: list[_Trade] = []
    for trade in trades:
        if trade.entry in (0, 2):
            found[trade.row] = (
                (trade.order, None)
                if trade.order > 0
                else (None, "the deal names no order, so its position is not known")
            )
        else:
            outs.append(trade)
    assigned = _exact_closes(outs, closed)
    # A deal that could be a partial close of a position still open is no part of a sum: which
    # position it closed would rest on the sums alone.
    left = [t for t in outs if t.row not in assigned and not any(_closes(p, t) for p in still_open)]
    unresolved = [p for p in closed if p.id not in set(assigned.values())]
    assigned |= _partial_closes(left, unresolved)
    for trade in outs:
        if trade.row in assigned:
            found[trade.row] = (assigned[trade.row], None)
        else:
            found[trade.row] = (None, _why_not(trade, closed, still_open))
    return found


def _closes(position: _Position, trade: _Trade) -> bool:
    """Whether `trade` could be a close of `position` at all."""
    return (
        trade.symbol == position.symbol
        and trade.side != position.side
        and position.opened <= trade.time
        and (position.closed is None or trade.time <= position.closed)
    )


def _is_whole_close(position: _Position, trade: _Trade) -> bool:
    return (
        _closes(position, trade)
        and trade.time == position.closed
        and trade.price == position.close_price
        and trade.volume == position.volume
        and trade.profit == position.profit
    )


def _exact_closes(outs: Sequence[_Trade], closed: Sequence[_Position]) -> dict[int, int]:
    matches = {t.row: [p.id for p in closed if _is_whole_close(p, t)] for t in outs}
    claims: dict[int, int] = {}
    for ids in matches.values():
        for position_id in ids:
            claims[position_id] = claims.get(position_id, 0) + 1
    return {row: ids[0] for row, ids in matches.items() if len(ids) == 1 and claims[ids[0]] == 1}


def _partial_closes(outs: Sequence[_Trade], closed: Sequence[_Position]) -> dict[int, int]:
    assigned: dict[int, int] = {}
    remaining = list(outs)
    pending = [p for p in closed if p.volume is not None]
    while True:
        options = {p.id: _close_sets(p, remaining) for p in pending}
        settled = None
        for position in pending:
            sets = options[position.id]
            if len(sets) != 1:
                continue
            rows = sets[0]
            elsewhere = {
                r
                for other, others in options.items()
                if other != position.id
                for s in others
                for r in s
            }
            if not rows & elsewhere:
                settled = (position, rows)
                break
        if settled is None:
            return assigned
        position, rows = settled
        assigned |= {row: position.id for row in rows}
        remaining = [t for t in remaining if t.row not in rows]
        pending = [p for p in pending if p.id != position.id]


def _close_sets(position: _Position, outs: Sequence[_Trade]) -> list[frozenset[int]]:
    """Every set of deals that adds up to the row's close: its volume, its profit, its last
    close at its close time, and its close price as the volume-weighted price of the set."""
    candidates = [t for t in outs if _closes(position, t)]
    if not candidates or len(candidates) > _MAX_CLOSE_CANDIDATES:
        return []
    assert position.volume is not None and position.close_price is not None
    unit = Decimal(1).scaleb(position.close_price.as_tuple().exponent)  # type: ignore[arg-type]
    found = []
    for size in range(1, len(candidates) + 1):
        for chosen in combinations(candidates, size):
            volume = sum((t.volume for t in chosen), Decimal(0))
            if volume != position.volume or volume <= 0:
                continue
            if sum((t.profit for t in chosen), Decimal(0)) != position.profit:
                continue
            if max(t.time for t in chosen) != position.closed:
                continue
            average = sum((t.price * t.volume for t in chosen), Decimal(0)) / volume
            if abs(average - position.close_price) * 2 > unit:
                continue
            found.append(frozenset(t.row for t in chosen))
    return found


def _why_not(trade: _Trade, closed: Sequence[_Position], still_open: Sequence[_Position]) -> str:
    same = ", ".join(str(p.id) for p in closed if _is_whole_close(p, trade))
    if "," in same:
        return (
            f"positions {same} were closed alike at {trade.time:%Y.%m.%d %H:%M:%S} (same "
            "symbol, volume, price and profit): which of them this deal closed cannot be told "
            "from the report"
        )
    if [p for p in still_open if _closes(p, trade)]:
        return (
            "it closes part of a position that is still open, and the report does not say "
            "which of the open positions"
        )
    if [p for p in closed if _closes(p, trade)]:
        return "its close does not add up with any one position of the Positions table"
    return (
        f"no position of {trade.symbol} in the report's Positions or Open Positions tables "
        "was open when it was made"
    )


# --- netting: one position per symbol at a time ------------------------------------------------


def _netting(trades: Sequence[_Trade], positions: Sequence[_Position]) -> dict[int, _Found]:
    """A netting account holds one position per symbol at a time, and every deal of that symbol
    while it is open is that position's (a reversal keeps its identifier): the deal's position
    is the row of the Positions or Open Positions table open at its time. At a second where one
    closes and the next opens, the opening deal is the one whose order is the new row's id."""
    found: dict[int, _Found] = {}
    for trade in trades:
        covering = [
            p
            for p in positions
            if p.symbol == trade.symbol
            and p.opened <= trade.time
            and (p.closed is None or trade.time <= p.closed)
        ]
        if len(covering) > 1:
            covering = _at_the_boundary(trade, covering)
        if len(covering) == 1:
            found[trade.row] = (covering[0].id, None)
        elif covering:
            ids = ", ".join(str(p.id) for p in covering)
            found[trade.row] = (None, f"positions {ids} were all open at its time")
        else:
            found[trade.row] = (
                None,
                f"no position of {trade.symbol} in the report's Positions or Open Positions "
                "tables was open when it was made",
            )
    return found


def _at_the_boundary(trade: _Trade, covering: Iterable[_Position]) -> list[_Position]:
    candidates = list(covering)
    if trade.entry == 0:
        opened = [p for p in candidates if p.id == trade.order and p.opened == trade.time]
        if opened:
            return opened
    if trade.entry == 1:
        closing = [p for p in candidates if p.closed == trade.time]
        if closing:
            return closing
    return candidates
