"""MetaTrader 5: deal webhooks into canonical fills, cash movements and a balance snapshot."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from functools import partial
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, Strict, field_validator

from services.shared.brokers import (
    Broker,
    CredentialField,
    Credentials,
    MappedEvent,
    PayloadOwner,
)
from services.shared.brokers.items import MappedItems, check_plausible_time
from services.shared.brokers.payloads import json_object_or_none, parse_json_payload
from services.shared.canonical import (
    AccountSnapshot,
    CashMovement,
    Fill,
    FillEntry,
    Side,
)
from services.shared.envelope import RawEvent
from services.shared.errors import InvalidEvent

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
_MAX_OFFSET_SECONDS = 14 * 3600
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# TimeTradeServer() - TimeGMT() jitters by a second or two; real zones are whole quarter hours.
_OFFSET_QUANTUM = 900


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


# Whole numbers must be JSON integers: lax mode would turn `true` into a SELL deal type.
Integer = Annotated[int, Strict()]
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


class Mt5Deal(_Strict):
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
    volume: Decimal = Field(ge=0)
    price: Decimal = Field(ge=0)
    commission: Decimal
    swap: Decimal
    profit: Decimal
    fee: Decimal
    symbol: str
    comment: str
    external_id: str

    @field_validator("volume", "price", "commission", "swap", "profit", "fee")
    @classmethod
    def _finite(cls, value: Decimal) -> Decimal:
        if not value.is_finite():
            raise ValueError("must be a finite number")
        return value


class Mt5Webhook(_Strict):
    """The body: `{"account": {...}, "server_time_offset_seconds": N, "deals": [TradeDeal...]}`."""

    account: Mt5Account
    server_time_offset_seconds: Integer = Field(ge=-_MAX_OFFSET_SECONDS, le=_MAX_OFFSET_SECONDS)
    deals: list[Any]


def _parse_body(body: bytes) -> Mt5Webhook:
    return parse_json_payload(body, Mt5Webhook)


def rounded_offset(offset_seconds: int) -> int:
    return round(offset_seconds / _OFFSET_QUANTUM) * _OFFSET_QUANTUM


def server_time_to_utc(time_msc: int, offset_seconds: int) -> datetime:
    """A server wall-clock epoch in milliseconds, as the UTC instant it names: deal times are the
    trade server's wall clock written as epoch numbers, so UTC is that minus the offset the
    sender reports (rounded to a quarter hour)."""
    utc_ms = time_msc - rounded_offset(offset_seconds) * 1000
    return _EPOCH + timedelta(milliseconds=utc_ms)


def _deal_time_msc(deal: Mt5Deal) -> int:
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


def _map_deal(deal: Mt5Deal, prefix: str, offset: int) -> Fill | CashMovement:
    time_msc = _deal_time_msc(deal)
    executed_at = server_time_to_utc(time_msc, offset)
    # Each deal is keyed by its ticket, its position by `position_id`.
    key = f"{prefix}:deal:{deal.ticket}"
    if deal.type in CASH_KINDS:
        return CashMovement(
            movement_key=key,
            kind=CASH_KINDS[deal.type],
            # Balance operations carry their amount in profit; any charge on them counts too.
            amount=deal.profit + deal.commission + deal.swap + deal.fee,
            executed_at=executed_at,
            broker_time=str(time_msc),
            broker_ref=str(deal.ticket),
            comment=deal.comment or None,
        )
    side = _SIDES.get(deal.type) or _CANCELLED_SIDES.get(deal.type)
    if side is None:
        raise InvalidEvent("unknown_deal_type", f"deal type {deal.type} is not known")
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
        entry=_ENTRIES[deal.entry],
        volume=deal.volume,
        price=deal.price,
        profit=deal.profit,
        commission=deal.commission,
        swap=deal.swap,
        fee=deal.fee,
        executed_at=executed_at,
        broker_time=str(time_msc),
        broker_ref=str(deal.ticket),
        order_ref=str(deal.order) if deal.order else None,
        comment=deal.comment or None,
        cancelled=deal.type in _CANCELLED_SIDES,
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


def _map_item(item: Any, prefix: str, offset: int, event: RawEvent) -> Fill | CashMovement:
    mapped = _map_deal(Mt5Deal.model_validate(item), prefix, offset)
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
    prefix = f"mt5:{webhook.account.server}:{webhook.account.login}"
    offset = webhook.server_time_offset_seconds
    items = MappedItems()
    for index, item in enumerate(webhook.deals):
        items.map(
            index,
            item,
            partial(_map_item, item, prefix, offset, event),
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


BROKER = Broker(
    name="mt5",
    title="MetaTrader 5",
    map_event=map_event,
    # The account's sign-in: what a cloud terminal logs in with (the investor password suffices).
    credentials=Credentials(
        (
            CredentialField("login", "Login", secret=False),
            CredentialField("password", "Investor password"),
            CredentialField("server", "Server", secret=False),
        )
    ),
    source="webhook",
    payload_owner=payload_owner,
    needs_server=True,  # deal keys embed server and login: a blank one would match no webhook
)
