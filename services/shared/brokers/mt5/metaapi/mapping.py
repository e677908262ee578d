"""A MetaApi page ("metaapi.deals") into the MT5 account's canonical fills, cash movements and
balance snapshot: each MetaApi deal read as the Mt5Deal it is, so its keys are the webhook's."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from functools import partial
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from services.shared.brokers import MappedEvent
from services.shared.brokers.items import MappedItems, check_plausible_time
from services.shared.brokers.mt5.deals import (
    CASH_KINDS,
    DEAL_ENTRIES,
    DEAL_TYPES,
    Mt5Deal,
    account_prefix,
    canonical_deal,
    wall_clock_msc,
)
from services.shared.brokers.payloads import parse_json_payload
from services.shared.canonical import AccountSnapshot, CashMovement, Fill
from services.shared.envelope import ConnectionType, RawEvent
from services.shared.errors import InvalidEvent

KIND = "metaapi.deals"
# MetaApi's deal types are MQL5's names, except three it spells without TYPE_.
METAAPI_DEAL_TYPES: dict[str, int] = DEAL_TYPES | {
    "DEAL_DIVIDEND": DEAL_TYPES["DEAL_TYPE_DIVIDEND"],
    "DEAL_DIVIDEND_FRANKED": DEAL_TYPES["DEAL_TYPE_DIVIDEND_FRANKED"],
    "DEAL_TAX": DEAL_TYPES["DEAL_TYPE_TAX"],
}
# ENUM_ACCOUNT_TRADE_MODE, as MetaApi's account information `type` says it.
DEMO_MODES = frozenset({"ACCOUNT_TRADE_MODE_DEMO", "ACCOUNT_TRADE_MODE_CONTEST"})
REAL_MODE = "ACCOUNT_TRADE_MODE_REAL"
_TICKET = re.compile(r"^[0-9]{1,20}$")
_BROKER_TIME = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}(\.\d{1,6})?$")
# A server's clock is its zone's: further from UTC than any zone is a corrupt deal.
_MAX_ZONE_OFFSET = timedelta(hours=14)
_ULONG_MAX = 2**64 - 1


def _number(value: object) -> Decimal:
    # MetaApi sends JSON numbers, read as exact Decimals; text or true/false is not a number.
    if isinstance(value, bool) or not isinstance(value, int | Decimal):
        raise ValueError("must be a JSON number")
    number = Decimal(value)
    if not number.is_finite():
        raise ValueError("must be a finite number")
    return number


def _ticket(value: object) -> int:
    # Ids are MT5 tickets (ulong) written as strings.
    if not isinstance(value, str) or not _TICKET.match(value) or int(value) > _ULONG_MAX:
        raise ValueError("must be an MT5 ticket written as a string of digits")
    return int(value)


def _utc_time(value: object) -> datetime:
    if not isinstance(value, str):
        raise ValueError("must be an ISO 8601 time")
    moment = datetime.fromisoformat(value)
    if moment.tzinfo is None:
        raise ValueError("must say its offset from UTC (MetaApi writes Z)")
    return moment.astimezone(UTC)


def parse_broker_time(value: object) -> datetime:
    """MetaApi's `brokerTime`, the server's wall clock: `YYYY-MM-DD HH:mm:ss.SSS`, naive."""
    if not isinstance(value, str) or not _BROKER_TIME.match(value):
        raise ValueError("must be the broker's time as YYYY-MM-DD HH:mm:ss.SSS")
    return datetime.fromisoformat(value)


Number = Annotated[Decimal, BeforeValidator(_number)]
Ticket = Annotated[int, BeforeValidator(_ticket)]
UtcTime = Annotated[datetime, BeforeValidator(_utc_time)]
BrokerTime = Annotated[datetime, BeforeValidator(parse_broker_time)]
_ZERO = Decimal(0)


class _Verbatim(BaseModel):
    """A MetaApi object as MetaApi sent it: fields not read here are ignored (MetaApi adds
    some), the ones read are strict."""

    model_config = ConfigDict(frozen=True, extra="ignore")


class MetaApiDeal(_Verbatim):
    """A MetatraderDeal (metaapi.cloud/docs/client/models/metatraderDeal)."""

    id: Ticket
    type: str
    entry_type: str | None = Field(None, alias="entryType")
    symbol: str = ""
    time: UtcTime
    broker_time: BrokerTime = Field(alias="brokerTime")
    volume: Number = _ZERO
    price: Number = _ZERO
    commission: Number = _ZERO
    swap: Number = _ZERO
    profit: Number
    position_id: Ticket | None = Field(None, alias="positionId")
    order_id: Ticket | None = Field(None, alias="orderId")
    comment: str = ""


class AccountInformation(_Verbatim):
    """MetatraderAccountInformation: what the snapshot and the checks read of it."""

    login: int = Field(gt=0)
    server: str = Field(min_length=1)
    currency: str = Field(min_length=1)
    balance: Number
    equity: Number
    type: str  # the trade mode


class _Page(BaseModel):
    """The poller's page of one MT5 account's MetaApi deals, MetaApi's objects verbatim:

    {"kind": "metaapi.deals", "login": "52557820", "server": "ICMarketsSC-Demo",
     "accountId": "<MetaApi account id>", "deals": [MetatraderDeal...],
     "accountInformation": {MetatraderAccountInformation} | null,
     "positions": [MetatraderPosition...] | null}
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["metaapi.deals"]
    login: str = Field(min_length=1)
    server: str = Field(min_length=1)
    account_id: str = Field(alias="accountId", min_length=1)
    deals: list[Any]
    account_information: dict[str, Any] | None = Field(None, alias="accountInformation")
    positions: list[Any] | None = None


def trade_mode_problem(connection_type: ConnectionType, trade_mode: str) -> str | None:
    """Why an account of this trade mode must not sync into a connection of this type, or None:
    a demo connection takes demo (and contest) accounts only, a live one real accounts only."""
    if connection_type == "demo":
        if trade_mode in DEMO_MODES:
            return None
        if trade_mode == REAL_MODE:
            return "is a real-money account, but the connection is a demo connection"
    else:
        if trade_mode == REAL_MODE:
            return None
        if trade_mode in DEMO_MODES:
            return "is a demo account, but the connection is a live connection"
    return f"reports trade mode {trade_mode!r}, which is neither demo nor real"


def read_deal(deal: MetaApiDeal) -> Mt5Deal:
    """The deal as MT5 knows it: `time` (UTC) is when it executed, `brokerTime` the server's
    wall clock it is kept beside (as the Expert Advisor's deals keep `time_msc`)."""
    deal_type = METAAPI_DEAL_TYPES.get(deal.type)
    if deal_type is None:
        raise InvalidEvent("unknown_deal_type", f"deal type {deal.type!r} is not known")
    if deal.entry_type is not None:
        entry = DEAL_ENTRIES.get(deal.entry_type)
        if entry is None:
            raise InvalidEvent("invalid_deal", f"deal entry {deal.entry_type!r} is not known")
    elif deal_type in CASH_KINDS:
        entry = 0  # a balance operation enters no position
    else:
        raise InvalidEvent("invalid_deal", "a trade deal needs an entryType")
    if abs(deal.broker_time - deal.time.replace(tzinfo=None)) > _MAX_ZONE_OFFSET:
        raise InvalidEvent(
            "invalid_deal",
            f"time {deal.time.isoformat()} and brokerTime {deal.broker_time.isoformat(' ')}"
            " are further apart than any time zone",
        )
    return Mt5Deal(
        ticket=deal.id,
        order=deal.order_id or 0,
        position_id=deal.position_id or 0,
        deal_type=deal_type,
        entry=entry,
        volume=deal.volume,
        price=deal.price,
        commission=deal.commission,
        swap=deal.swap,
        fee=_ZERO,  # MetaApi's deal has no fee of its own
        profit=deal.profit,
        symbol=deal.symbol,
        comment=deal.comment,
        executed_at=deal.time,
        server_time_msc=wall_clock_msc(deal.broker_time),
    )


def _check_account(event: RawEvent, page: _Page) -> None:
    """The page is the connection's MT5 account (or nothing of it is mapped)."""
    connection = event.connection
    if page.login != connection.account_number or page.server != connection.server:
        raise InvalidEvent(
            "account_mismatch",
            f"page is for login {page.login} on {page.server!r}, the connection is for"
            f" {connection.account_number} on {connection.server!r}",
        )
    info = page.account_information
    if info is None:
        return
    login, server, mode = info.get("login"), info.get("server"), info.get("type")
    if str(login) != page.login or server != page.server:
        raise InvalidEvent(
            "account_mismatch",
            f"the account information is for login {login} on {server!r}, not the page's",
        )
    problem = trade_mode_problem(connection.connection_type, str(mode))
    if problem is not None:
        raise InvalidEvent("account_mismatch", f"MT5 account {page.login} {problem}")


def _map_item(item: Any, prefix: str, event: RawEvent) -> Fill | CashMovement:
    mapped = canonical_deal(read_deal(MetaApiDeal.model_validate(item)), prefix)
    check_plausible_time(mapped, event.received_at)
    return mapped


def _snapshot(
    event: RawEvent, info: dict[str, Any], fills: list[Fill], cash: list[CashMovement]
) -> AccountSnapshot:
    account = AccountInformation.model_validate(info)
    return AccountSnapshot(
        currency=account.currency,
        balance=account.balance,
        equity=account.equity,
        as_of=event.received_at,
        # As for a webhook: a page re-sent late cannot roll a newer balance back.
        deals_through=max(
            [f.executed_at for f in fills] + [c.executed_at for c in cash], default=None
        ),
    )


def map_event(event: RawEvent) -> MappedEvent:
    page = parse_json_payload(event.body, _Page)
    _check_account(event, page)
    prefix = account_prefix(page.server, page.login)
    items = MappedItems()
    for index, item in enumerate(page.deals):
        items.map(index, item, partial(_map_item, item, prefix, event), invalid_code="invalid_deal")
    snapshot = None
    if page.account_information is not None:
        info = page.account_information
        snapshot = items.account(
            info,
            lambda: _snapshot(event, info, items.fills, items.cash),
            invalid_code="invalid_account",
        )
    # Open positions ride along for the record; a journal row is built from its deals.
    return items.event(event, snapshot)
