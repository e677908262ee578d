"""OANDA v20: one poller page of account transactions into canonical fills and cash movements."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from decimal import ROUND_HALF_EVEN, Decimal
from functools import partial
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from services.shared.brokers import MappedEvent, PayloadOwner, Skipped
from services.shared.brokers.items import MappedItems, Record, check_plausible_time
from services.shared.brokers.payloads import json_object_or_none, parse_json_payload
from services.shared.canonical import AccountSnapshot, CashMovement, Fill, Side
from services.shared.envelope import RawEvent
from services.shared.errors import InvalidEvent

_DECIMAL_TEXT = re.compile(r"^-?\d+(\.\d+)?$")
_ID_TEXT = re.compile(r"^\d{1,20}$")
_RFC3339 = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?(Z|[+-]\d{2}:\d{2})$"
)
_ZERO = Decimal(0)


def _decimal_text(value: object) -> Decimal:
    # OANDA writes every amount as a string, and it stays a Decimal: a JSON number here was
    # re-encoded on the way, so it is refused, never rounded.
    if not isinstance(value, str) or not _DECIMAL_TEXT.match(value):
        raise ValueError("must be a decimal number written as a string")
    return Decimal(value)


def _id_text(value: object) -> str:
    if not isinstance(value, str) or not _ID_TEXT.match(value):
        raise ValueError("must be a numeric id written as a string")
    return value


def _timestamp_text(value: object) -> str:
    if not isinstance(value, str) or not _RFC3339.match(value):
        raise ValueError("must be an RFC 3339 time")
    parse_time(value)  # a valid shape can still name no date (month 13, second 61)
    return value


DecimalText = Annotated[Decimal, BeforeValidator(_decimal_text)]
IdText = Annotated[str, BeforeValidator(_id_text)]
TimeText = Annotated[str, BeforeValidator(_timestamp_text)]


def parse_time(text: str) -> datetime:
    """An RFC 3339 time with up to nanoseconds, as UTC truncated to microseconds."""
    match = _RFC3339.match(text)
    if match is None:
        raise ValueError(f"not an RFC 3339 time: {text!r}")
    year, month, day, hour, minute, second, fraction, zone = match.groups()
    offset = timedelta(0)
    if zone != "Z":
        sign = -1 if zone[0] == "-" else 1
        offset = sign * timedelta(hours=int(zone[1:3]), minutes=int(zone[4:6]))
    local = datetime(
        int(year),
        int(month),
        int(day),
        int(hour),
        int(minute),
        int(second),
        int((fraction or "").ljust(6, "0")[:6]),
        tzinfo=timezone(offset),
    )
    return local.astimezone(UTC)


class _Page(BaseModel):
    """The poller's own envelope (application/json): exactly these fields, with OANDA's objects
    inside it verbatim.

        {"kind": "oanda.transactions", "accountID": "101-004-1435156-001",
         "environment": "practice" | "live", "from_id": "2304" | null, "to_id": "2311",
         "lastTransactionID": "2311", "transactions": [Transaction...],
         "account": {AccountSummary} | null, "openTrades": [Trade...] | null}
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["oanda.transactions"]
    account_id: str = Field(alias="accountID", min_length=1)
    environment: Literal["practice", "live"]
    from_id: IdText | None = None
    to_id: IdText
    last_transaction_id: IdText = Field(alias="lastTransactionID")
    transactions: list[Any]
    account: dict[str, Any] | None = None
    open_trades: list[Any] | None = Field(default=None, alias="openTrades")


class _Verbatim(BaseModel):
    """An OANDA object as OANDA sent it: fields we do not read are ignored, the rest strict."""

    model_config = ConfigDict(frozen=True, extra="ignore")


class _Account(_Verbatim):
    id: str | None = None
    currency: str = Field(min_length=1)
    balance: DecimalText
    nav: DecimalText = Field(alias="NAV")


class _TradeOpen(_Verbatim):
    trade_id: IdText = Field(alias="tradeID")
    units: DecimalText
    price: DecimalText | None = None


class _TradeReduce(_Verbatim):
    trade_id: IdText = Field(alias="tradeID")
    units: DecimalText
    price: DecimalText | None = None
    realized_pl: DecimalText = Field(alias="realizedPL")
    financing: DecimalText


class _Transaction(_Verbatim):
    id: IdText
    time: TimeText
    type: str
    account_id: str | None = Field(default=None, alias="accountID")


class _OrderFill(_Transaction):
    order_id: IdText | None = Field(default=None, alias="orderID")
    instrument: str = Field(min_length=1)
    units: DecimalText
    price: DecimalText | None = None
    reason: str | None = None
    # Both are positive amounts OANDA takes off the balance.
    commission: DecimalText = _ZERO
    guaranteed_execution_fee: DecimalText = Field(default=_ZERO, alias="guaranteedExecutionFee")
    trade_opened: _TradeOpen | None = Field(default=None, alias="tradeOpened")
    trades_closed: tuple[_TradeReduce, ...] = Field(default=(), alias="tradesClosed")
    trade_reduced: _TradeReduce | None = Field(default=None, alias="tradeReduced")


class _OpenTradeFinancing(_Verbatim):
    trade_id: IdText = Field(alias="tradeID")
    financing: DecimalText


class _PositionFinancing(_Verbatim):
    instrument: str | None = None
    open_trade_financings: tuple[_OpenTradeFinancing, ...] = Field(
        default=(), alias="openTradeFinancings"
    )


class _DailyFinancing(_Transaction):
    financing: DecimalText
    position_financings: tuple[_PositionFinancing, ...] = Field(
        default=(), alias="positionFinancings"
    )


class _TransferFunds(_Transaction):
    amount: DecimalText
    comment: str | None = None
    funding_reason: str | None = Field(default=None, alias="fundingReason")


class _DividendAdjustment(_Transaction):
    dividend_adjustment: DecimalText = Field(alias="dividendAdjustment")


@dataclass(frozen=True)
class _Leg:
    action: Literal["open", "close", "reduce"]
    trade_id: str
    units: Decimal
    price: Decimal | None
    profit: Decimal = _ZERO
    financing: Decimal = _ZERO


def split_by_units(total: Decimal, units: list[Decimal]) -> list[Decimal]:
    """`total` shared across legs in proportion to |units|, each share rounded to the total's
    own precision (half-even), and the last leg taking the remainder so the shares sum exactly.
    """
    weights = [abs(u) for u in units]
    whole = sum(weights, _ZERO)
    if whole == 0:
        return [_ZERO for _ in units[:-1]] + [total]
    exponent = total.as_tuple().exponent  # an int: amounts here are finite
    quantum = Decimal(1).scaleb(min(exponent, 0) if isinstance(exponent, int) else 0)
    shares = [(total * w / whole).quantize(quantum, rounding=ROUND_HALF_EVEN) for w in weights[:-1]]
    return [*shares, total - sum(shares, _ZERO)]


def _legs(fill: _OrderFill) -> list[_Leg]:
    # OANDA applies closes, then the reduce, then the open: the legs keep that order.
    legs = [
        _Leg("close", t.trade_id, t.units, t.price, t.realized_pl, t.financing)
        for t in fill.trades_closed
    ]
    if (reduced := fill.trade_reduced) is not None:
        legs.append(
            _Leg(
                "reduce",
                reduced.trade_id,
                reduced.units,
                reduced.price,
                reduced.realized_pl,
                reduced.financing,
            )
        )
    if (opened := fill.trade_opened) is not None:
        legs.append(_Leg("open", opened.trade_id, opened.units, opened.price))
    return legs


def _side(units: Decimal) -> Side:
    return "buy" if units > 0 else "sell"


def _map_order_fill(fill: _OrderFill, prefix: str) -> list[Fill]:
    """An ORDER_FILL's legs, each its own canonical fill. A position is one OANDA trade
    (`oanda:{accountID}:{tradeID}`): an ORDER_FILL opens it, and later fills reduce or close it.

    The fill's `commission` and `guaranteedExecutionFee` belong to the whole fill, not to a leg:
    they are shared across its legs in proportion to |units| (`split_by_units`). The realized
    P/L and financing of each closed or reduced trade are its leg's own."""
    legs = _legs(fill)
    if not legs:
        raise InvalidEvent(
            "invalid_transaction", "an ORDER_FILL opened, closed and reduced nothing"
        )
    prices: list[Decimal] = []
    for leg in legs:
        if leg.units == 0:
            raise InvalidEvent("invalid_transaction", f"trade {leg.trade_id}: units must not be 0")
        # Each leg's own price is the official one; older fills only carry the fill's price.
        price = leg.price if leg.price is not None else fill.price
        if price is None:
            raise InvalidEvent("invalid_transaction", f"trade {leg.trade_id}: no price")
        prices.append(price)
    units = [leg.units for leg in legs]
    # OANDA writes charges as positive amounts off the balance; canonical charges are negative,
    # as MT5's are.
    commissions = split_by_units(_ZERO - fill.commission, units)
    fees = split_by_units(_ZERO - fill.guaranteed_execution_fee, units)
    executed_at = parse_time(fill.time)
    return [
        Fill(
            fill_key=f"{prefix}:txn:{fill.id}:{leg.action}:{leg.trade_id}",
            position_key=f"{prefix}:{leg.trade_id}",
            symbol=fill.instrument,
            side=_side(leg.units),
            entry="in" if leg.action == "open" else "out",
            volume=abs(leg.units),
            price=price,
            profit=leg.profit,
            commission=commission,
            swap=leg.financing,
            fee=fee,
            executed_at=executed_at,
            broker_time=fill.time,
            broker_ref=fill.id,
            order_ref=fill.order_id,
            comment=fill.reason,
        )
        for leg, price, commission, fee in zip(legs, prices, commissions, fees, strict=True)
    ]


def _cash(
    transaction: _Transaction,
    prefix: str,
    kind: str,
    amount: Decimal,
    comment: str | None = None,
    *,
    trade_id: str | None = None,
) -> CashMovement:
    key = f"{prefix}:txn:{transaction.id}"
    return CashMovement(
        movement_key=key if trade_id is None else f"{key}:trade:{trade_id}",
        kind=kind,
        amount=amount,
        executed_at=parse_time(transaction.time),
        broker_time=transaction.time,
        broker_ref=transaction.id,
        comment=comment,
        position_key=None if trade_id is None else f"{prefix}:{trade_id}",
    )


def _map_daily_financing(item: Any, prefix: str) -> list[CashMovement]:
    """Each open trade's share (`openTradeFinancings`) as a charge of that trade, so its
    journal swap adds up to OANDA's own TradeSummary `financing`; whatever the breakdown leaves
    unattributed (or all of it, without one) as the account's."""
    financing = _DailyFinancing.model_validate(item)
    shares = [
        trade
        for position in financing.position_financings
        for trade in position.open_trade_financings
    ]
    if len({trade.trade_id for trade in shares}) != len(shares):
        raise InvalidEvent("invalid_transaction", "a trade's financing is listed twice")
    movements = [
        _cash(financing, prefix, "financing", trade.financing, trade_id=trade.trade_id)
        for trade in shares
        if trade.financing != 0
    ]
    unattributed = financing.financing - sum((trade.financing for trade in shares), _ZERO)
    if unattributed != 0 or not movements:
        movements.append(_cash(financing, prefix, "financing", unattributed))
    return movements


def _map_transfer(item: Any, prefix: str) -> list[CashMovement]:
    transfer = _TransferFunds.model_validate(item)
    kind = "withdrawal" if transfer.amount < 0 else "deposit"
    return [
        _cash(transfer, prefix, kind, transfer.amount, transfer.comment or transfer.funding_reason)
    ]


def _map_dividend(item: Any, prefix: str) -> list[CashMovement]:
    dividend = _DividendAdjustment.model_validate(item)
    return [_cash(dividend, prefix, "dividend", dividend.dividend_adjustment)]


def _map_fill(item: Any, prefix: str) -> list[Fill]:
    return _map_order_fill(_OrderFill.model_validate(item), prefix)


# An ORDER_FILL is fills; the other three are cash movements; every other type is skipped.
_MAPPED: dict[str, Callable[[Any, str], Sequence[Record]]] = {
    "ORDER_FILL": _map_fill,
    "DAILY_FINANCING": _map_daily_financing,
    "TRANSFER_FUNDS": _map_transfer,
    "DIVIDEND_ADJUSTMENT": _map_dividend,
}


def _parse_body(body: bytes) -> _Page:
    return parse_json_payload(body, _Page)


def _check_account(event: RawEvent, page: _Page) -> None:
    """The page, and its summary if it has one, are for the connection's account (or nothing
    of it is mapped: a page that mixes accounts is not to be trusted in any part)."""
    connection = event.connection
    summary_id = page.account.get("id") if page.account is not None else None
    if summary_id is not None and summary_id != page.account_id:
        raise InvalidEvent(
            "account_mismatch", f"the summary is for account {summary_id}, not {page.account_id}"
        )
    if page.account_id != connection.account_number:
        raise InvalidEvent(
            "account_mismatch",
            f"page is for account {page.account_id}, the connection is for "
            f"{connection.account_number}",
        )
    expected = "live" if connection.connection_type == "live" else "practice"
    if page.environment != expected:
        raise InvalidEvent(
            "account_mismatch",
            f"page is from OANDA {page.environment}, "
            f"the connection is {connection.connection_type}",
        )


def _snapshot(event: RawEvent, page: _Page, account_data: dict[str, Any]) -> AccountSnapshot:
    account = _Account.model_validate(account_data)
    return AccountSnapshot(
        currency=account.currency,
        balance=account.balance,
        equity=account.nav,
        as_of=event.received_at,
        # The summary reflects every transaction up to the page's last: a page re-sent late
        # carries older ones, so it cannot roll a newer balance back.
        deals_through=max((t for t in map(_time_of, page.transactions) if t), default=None),
    )


def _time_of(item: Any) -> datetime | None:
    if isinstance(item, dict) and isinstance(text := item.get("time"), str):
        try:
            return parse_time(text)
        except ValueError:
            return None
    return None


def _map_transaction(
    index: int, item: Any, page: _Page, prefix: str, event: RawEvent
) -> Sequence[Record] | Skipped:
    kind = item.get("type") if isinstance(item, dict) else None
    if not isinstance(kind, str):
        raise InvalidEvent("invalid_transaction", "a transaction must be an object with a type")
    if kind not in _MAPPED:
        ref = item.get("id")
        return Skipped(index, kind, ref if isinstance(ref, str) else None, _NOT_MAPPED)
    if item.get("accountID", page.account_id) != page.account_id:
        raise InvalidEvent("account_mismatch", f"transaction is for {item['accountID']}")
    records = _MAPPED[kind](item, prefix)
    for record in records:
        check_plausible_time(record, event.received_at)
    return records


_NOT_MAPPED = "not a fill or a cash movement"


def map_event(event: RawEvent) -> MappedEvent:
    page = _parse_body(event.body)
    _check_account(event, page)
    prefix = f"oanda:{page.account_id}"
    items = MappedItems()
    for index, item in enumerate(page.transactions):
        items.map(
            index,
            item,
            partial(_map_transaction, index, item, page, prefix, event),
            invalid_code="invalid_transaction",
        )
    snapshot = None
    if page.account is not None:
        snapshot = items.account(
            page.account,
            partial(_snapshot, event, page, page.account),
            invalid_code="invalid_payload",
        )
    return items.event(event, snapshot)


def payload_owner(body: bytes) -> PayloadOwner | None:
    """The OANDA account (and practice or live) a page names, or None."""
    document = json_object_or_none(body)
    account_id = document.get("accountID") if document is not None else None
    if document is None or not isinstance(account_id, str):
        return None
    live = document.get("environment") == "live"
    return PayloadOwner(account_id, connection_type="live" if live else "demo")
