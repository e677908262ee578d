"""MT5 deal webhooks (the Expert Advisor, bridges) into canonical fills, cash movements and a
balance snapshot."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from functools import partial
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, Strict

from services.shared.brokers import MappedEvent, PayloadOwner
from services.shared.brokers.items import MappedItems, check_plausible_time
from services.shared.brokers.mt5.deals import Mt5Deal, account_prefix, canonical_deal
from services.shared.brokers.payloads import json_object_or_none, parse_json_payload
from services.shared.canonical import AccountSnapshot, CashMovement, Fill
from services.shared.envelope import RawEvent
from services.shared.errors import InvalidEvent

_MAX_OFFSET_SECONDS = 14 * 3600
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# TimeTradeServer() - TimeGMT() jitters by a second or two; real zones are whole quarter hours.
_OFFSET_QUANTUM = 900


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


# Whole numbers must be JSON integers: lax mode would turn `true` into a SELL deal type.
Integer = Annotated[int, Strict()]
# NaN and infinities refused by pydantic itself (no Python call per field: this is per deal).
FiniteDecimal = Annotated[Decimal, Field(allow_inf_nan=False)]
# Tickets, orders and position ids are MQL5 `ulong`s.
_ULONG_MAX = 2**64 - 1
# Server times up to the year 3000; later ones are corrupt, not trades.
_LAST_SERVER_SECOND = 32_503_680_000


class Mt5Account(_Strict):
    login: Integer = Field(gt=0)
    server: str = Field(min_length=1)
    currency: str = Field(min_length=1)
    balance: Decimal
    equity: Decimal


class TradeDeal(_Strict):
    """Exactly the fields of the MetaTrader5 package's TradeDeal."""

    ticket: Integer = Field(gt=0, le=_ULONG_MAX)
    order: Integer = Field(ge=0, le=_ULONG_MAX)
    time: Integer = Field(ge=0, le=_LAST_SERVER_SECOND)
    time_msc: Integer = Field(ge=0, le=_LAST_SERVER_SECOND * 1000)
    type: Integer = Field(ge=0)
    entry: Integer = Field(ge=0, le=3)
    magic: Integer
    position_id: Integer = Field(ge=0, le=_ULONG_MAX)
    reason: Integer = Field(ge=0)
    volume: FiniteDecimal = Field(ge=0)
    price: FiniteDecimal = Field(ge=0)
    commission: FiniteDecimal
    swap: FiniteDecimal
    profit: FiniteDecimal
    fee: FiniteDecimal
    symbol: str
    comment: str
    external_id: str


class Mt5Webhook(_Strict):
    """The body: `{"account": {...}, "server_time_offset_seconds": N, "deals": [TradeDeal...]}`."""

    account: Mt5Account
    server_time_offset_seconds: Integer = Field(ge=-_MAX_OFFSET_SECONDS, le=_MAX_OFFSET_SECONDS)
    deals: list[Any]


def _parse_body(body: bytes) -> Mt5Webhook:
    return parse_json_payload(body, Mt5Webhook)


def offset_milliseconds(offset_seconds: int) -> int:
    """The server's offset from UTC the sender reports, rounded to its zone's quarter hour."""
    return round(offset_seconds / _OFFSET_QUANTUM) * _OFFSET_QUANTUM * 1000


def server_time_to_utc(time_msc: int, offset_ms: int) -> datetime:
    """A server wall-clock epoch in milliseconds, as the UTC instant it names: deal times are the
    trade server's wall clock written as epoch numbers, so UTC is that minus the server's offset
    (`offset_milliseconds`, read once per webhook)."""
    return _EPOCH + timedelta(milliseconds=time_msc - offset_ms)


def _deal_time_msc(deal: TradeDeal) -> int:
    """The deal's server time in milliseconds; `time` and `time_msc` must name the same second."""
    if deal.time == 0 and deal.time_msc == 0:
        raise InvalidEvent("invalid_deal", "a deal needs a time")
    if deal.time_msc == 0:
        return deal.time * 1000
    if abs(deal.time_msc // 1000 - deal.time) > 1:
        raise InvalidEvent(
            "invalid_deal", f"time {deal.time} and time_msc {deal.time_msc} disagree"
        )
    return deal.time_msc


def _read_deal(deal: TradeDeal, offset_ms: int) -> Mt5Deal:
    time_msc = _deal_time_msc(deal)
    return Mt5Deal(
        ticket=deal.ticket,
        order=deal.order,
        position_id=deal.position_id,
        deal_type=deal.type,
        entry=deal.entry,
        volume=deal.volume,
        price=deal.price,
        commission=deal.commission,
        swap=deal.swap,
        fee=deal.fee,
        profit=deal.profit,
        symbol=deal.symbol,
        comment=deal.comment,
        executed_at=server_time_to_utc(time_msc, offset_ms),
        server_time_msc=time_msc,
    )


def _check_account(event: RawEvent, account: Mt5Account) -> None:
    connection = event.connection
    if str(account.login) != connection.account_number:
        raise InvalidEvent(
            "account_mismatch",
            f"payload is for login {account.login}, the connection is for "
            f"{connection.account_number}",
        )
    if account.server != connection.server:
        raise InvalidEvent(
            "account_mismatch",
            f"payload is for server {account.server!r}, the connection is for "
            f"{connection.server!r}",
        )


def _map_item(item: Any, prefix: str, offset_ms: int, event: RawEvent) -> Fill | CashMovement:
    mapped = canonical_deal(_read_deal(TradeDeal.model_validate(item), offset_ms), prefix)
    check_plausible_time(mapped, event.received_at)
    return mapped


def _snapshot(
    event: RawEvent, account: Mt5Account, fills: list[Fill], cash: list[CashMovement]
) -> AccountSnapshot:
    return AccountSnapshot(
        currency=account.currency,
        balance=account.balance,
        equity=account.equity,
        as_of=event.sent_at or event.received_at,
        deals_through=max(
            [f.executed_at for f in fills] + [c.executed_at for c in cash], default=None
        ),
    )


def map_event(event: RawEvent) -> MappedEvent:
    webhook = _parse_body(event.body)
    _check_account(event, webhook.account)
    prefix = account_prefix(webhook.account.server, webhook.account.login)
    offset_ms = offset_milliseconds(webhook.server_time_offset_seconds)
    items = MappedItems()
    for index, item in enumerate(webhook.deals):
        items.map(
            index,
            item,
            partial(_map_item, item, prefix, offset_ms, event),
            invalid_code="invalid_deal",
        )
    snapshot = items.account(
        webhook.account,
        lambda: _snapshot(event, webhook.account, items.fills, items.cash),
        invalid_code="invalid_account",
    )
    return items.event(event, snapshot)


def payload_owner(body: bytes) -> PayloadOwner | None:
    """The MT5 login and server a body names, or None."""
    document = json_object_or_none(body)
    account = document.get("account") if isinstance(document, dict) else None
    if not isinstance(account, dict):
        return None
    login, server = account.get("login"), account.get("server")
    if not isinstance(login, int) or isinstance(login, bool):
        return None
    return PayloadOwner(str(login), server if isinstance(server, str) else None)
