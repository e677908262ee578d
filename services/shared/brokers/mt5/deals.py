"""One MT5 deal, however it arrived (Expert Advisor, cloud terminal, the terminal's report), as
the canonical fill or cash movement, keyed by server, login and the broker's ticket."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import NamedTuple

from services.shared.canonical import CashMovement, Fill, FillEntry, Side
from services.shared.errors import InvalidEvent

# ENUM_DEAL_ENTRY and ENUM_DEAL_TYPE by their MQL5 names (MetaApi uses the same names).
DEAL_ENTRIES: dict[str, int] = {
    "DEAL_ENTRY_IN": 0,
    "DEAL_ENTRY_OUT": 1,
    "DEAL_ENTRY_INOUT": 2,
    "DEAL_ENTRY_OUT_BY": 3,
}
DEAL_TYPES: dict[str, int] = {
    "DEAL_TYPE_BUY": 0,
    "DEAL_TYPE_SELL": 1,
    "DEAL_TYPE_BALANCE": 2,
    "DEAL_TYPE_CREDIT": 3,
    "DEAL_TYPE_CHARGE": 4,
    "DEAL_TYPE_CORRECTION": 5,
    "DEAL_TYPE_BONUS": 6,
    "DEAL_TYPE_COMMISSION": 7,
    "DEAL_TYPE_COMMISSION_DAILY": 8,
    "DEAL_TYPE_COMMISSION_MONTHLY": 9,
    "DEAL_TYPE_COMMISSION_AGENT_DAILY": 10,
    "DEAL_TYPE_COMMISSION_AGENT_MONTHLY": 11,
    "DEAL_TYPE_INTEREST": 12,
    "DEAL_TYPE_BUY_CANCELED": 13,
    "DEAL_TYPE_SELL_CANCELED": 14,
    "DEAL_TYPE_DIVIDEND": 15,
    "DEAL_TYPE_DIVIDEND_FRANKED": 16,
    "DEAL_TYPE_TAX": 17,
}

_ENTRIES: dict[int, FillEntry] = {0: "in", 1: "out", 2: "inout", 3: "out_by"}
_SIDES: dict[int, Side] = {0: "buy", 1: "sell"}
# DEAL_TYPE_BUY_CANCELED / SELL_CANCELED: MT5 re-types an executed deal when the broker cancels
# it, zeroes its profit and books the money as a separate balance deal.
_CANCELLED_SIDES: dict[int, Side] = {13: "buy", 14: "sell"}
# ENUM_DEAL_TYPE values 2 and above: money movements, not trades.
CASH_KINDS: dict[int, str] = {
    2: "balance",
    3: "credit",
    4: "charge",
    5: "correction",
    6: "bonus",
    7: "commission",
    8: "commission_daily",
    9: "commission_monthly",
    10: "commission_agent_daily",
    11: "commission_agent_monthly",
    12: "interest",
    15: "dividend",
    16: "dividend_franked",
    17: "tax",
}
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class Mt5Deal(NamedTuple):
    """A deal as MT5 knows it (the fields of MQL5's deal properties), times already read.

    A named tuple, not a frozen dataclass: one is built for every deal, and a frozen dataclass's
    `__init__` sets its 15 fields one `object.__setattr__` at a time (about 3 times slower)."""

    ticket: int
    order: int
    position_id: int
    deal_type: int  # ENUM_DEAL_TYPE
    entry: int  # ENUM_DEAL_ENTRY
    volume: Decimal
    price: Decimal
    commission: Decimal
    swap: Decimal
    fee: Decimal
    profit: Decimal
    symbol: str
    comment: str
    executed_at: datetime  # UTC
    server_time_msc: int  # the trade server's wall clock as epoch milliseconds, as MT5 writes it


def account_prefix(server: str, login: int | str) -> str:
    """What every key of one MT5 account starts with: its server and login."""
    return f"mt5:{server}:{login}"


def wall_clock_msc(server_time: datetime) -> int:
    """A naive server wall-clock time as MT5's epoch milliseconds of that wall clock."""
    return (server_time.replace(tzinfo=UTC) - _EPOCH) // timedelta(milliseconds=1)


def canonical_deal(deal: Mt5Deal, prefix: str) -> Fill | CashMovement:
    """The deal's fill, or its cash movement for balance, credit, commission... deals."""
    key = f"{prefix}:deal:{deal.ticket}"
    kind = CASH_KINDS.get(deal.deal_type)
    if kind is not None:
        return CashMovement(
            movement_key=key,
            kind=kind,
            # Balance operations carry their amount in profit; any charge on them counts too.
            amount=deal.profit + deal.commission + deal.swap + deal.fee,
            executed_at=deal.executed_at,
            broker_time=str(deal.server_time_msc),
            broker_ref=str(deal.ticket),
            comment=deal.comment or None,
        )
    side = _SIDES.get(deal.deal_type) or _CANCELLED_SIDES.get(deal.deal_type)
    if side is None:
        raise InvalidEvent("unknown_deal_type", f"deal type {deal.deal_type} is not known")
    entry = _ENTRIES.get(deal.entry)
    if entry is None:
        raise InvalidEvent("invalid_deal", f"deal entry {deal.entry} is not known")
    if not deal.symbol:
        raise InvalidEvent("invalid_deal", "a trade deal needs a symbol")
    if deal.position_id <= 0:
        raise InvalidEvent("invalid_deal", "a trade deal needs a position_id")
    if deal.volume <= 0 or deal.price <= 0:
        raise InvalidEvent("invalid_deal", "a trade deal needs a positive volume and price")
    return Fill(
        fill_key=key,
        position_key=f"{prefix}:{deal.position_id}",
        symbol=deal.symbol,
        side=side,
        entry=entry,
        volume=deal.volume,
        price=deal.price,
        profit=deal.profit,
        commission=deal.commission,
        swap=deal.swap,
        fee=deal.fee,
        executed_at=deal.executed_at,
        broker_time=str(deal.server_time_msc),
        broker_ref=str(deal.ticket),
        order_ref=str(deal.order) if deal.order else None,
        comment=deal.comment or None,
        cancelled=deal.deal_type in _CANCELLED_SIDES,
    )
