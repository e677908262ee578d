"""Payloads of kind "mt5.report": the Deals rows of a terminal's history report, each with its
position, into the same fills and cash movements (and keys) as the Expert Advisor's webhooks."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import Annotated, Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, Strict

from services.shared.brokers import MappedEvent, Rejection
from services.shared.brokers.items import MappedItems, check_plausible_time, mapped_or_rejected
from services.shared.brokers.mt5.deals import (
    DEAL_TYPES,
    Mt5Deal,
    account_prefix,
    canonical_deal,
    wall_clock_msc,
)
from services.shared.brokers.mt5.report_deals import (
    DIRECTIONS,
    DealRow,
    ReportDeals,
    report_number,
    report_time,
)
from services.shared.brokers.mt5.server_clock import ServerClock, server_clock
from services.shared.brokers.payloads import parse_json_payload
from services.shared.canonical import AccountSnapshot, CashMovement, Fill
from services.shared.envelope import RawEvent
from services.shared.errors import InvalidEvent

KIND = "mt5.report"
# A chunk's body stays far below the topic's message size (1 MiB by Kafka's default; the raw
# event carries the body in base64, 4/3 of it).
MAX_CHUNK_BYTES = 256 * 1024
MAX_CHUNK_DEALS = 500
_ENVELOPE_BYTES = 4096  # a chunk's account, clock, file name and balance, generously
_ULONG_MAX = 2**64 - 1
Integer = Annotated[int, Strict()]

# The Deals table's Type column, as the terminal writes it in English, to ENUM_DEAL_TYPE.
REPORT_DEAL_TYPES: Mapping[str, int] = {
    "buy": DEAL_TYPES["DEAL_TYPE_BUY"],
    "sell": DEAL_TYPES["DEAL_TYPE_SELL"],
    "balance": DEAL_TYPES["DEAL_TYPE_BALANCE"],
    "credit": DEAL_TYPES["DEAL_TYPE_CREDIT"],
    "charge": DEAL_TYPES["DEAL_TYPE_CHARGE"],
    "additional charge": DEAL_TYPES["DEAL_TYPE_CHARGE"],
    "correction": DEAL_TYPES["DEAL_TYPE_CORRECTION"],
    "bonus": DEAL_TYPES["DEAL_TYPE_BONUS"],
    "commission": DEAL_TYPES["DEAL_TYPE_COMMISSION"],
    "daily commission": DEAL_TYPES["DEAL_TYPE_COMMISSION_DAILY"],
    "monthly commission": DEAL_TYPES["DEAL_TYPE_COMMISSION_MONTHLY"],
    "daily agent commission": DEAL_TYPES["DEAL_TYPE_COMMISSION_AGENT_DAILY"],
    "monthly agent commission": DEAL_TYPES["DEAL_TYPE_COMMISSION_AGENT_MONTHLY"],
    "interest": DEAL_TYPES["DEAL_TYPE_INTEREST"],
    "interest rate": DEAL_TYPES["DEAL_TYPE_INTEREST"],
    "buy canceled": DEAL_TYPES["DEAL_TYPE_BUY_CANCELED"],
    "buy cancelled": DEAL_TYPES["DEAL_TYPE_BUY_CANCELED"],
    "sell canceled": DEAL_TYPES["DEAL_TYPE_SELL_CANCELED"],
    "sell cancelled": DEAL_TYPES["DEAL_TYPE_SELL_CANCELED"],
    "dividend": DEAL_TYPES["DEAL_TYPE_DIVIDEND"],
    "franked dividend": DEAL_TYPES["DEAL_TYPE_DIVIDEND_FRANKED"],
    "tax": DEAL_TYPES["DEAL_TYPE_TAX"],
}
_TRADE_TYPES = {0, 1, 13, 14}


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ReportAccountRef(_Strict):
    login: Integer = Field(gt=0)
    server: str = Field(min_length=1)
    currency: str | None = None


class ReportBalance(_Strict):
    """The Balance column of the report's last deal: the balance after it, as of its time."""

    amount: str
    time: str
    deal: str


class ReportDealItem(_Strict):
    """One Deals row: its cells as the report wrote them, its row in the file, its position."""

    row: Integer
    time: str
    deal: str
    symbol: str
    type: str
    direction: str
    volume: str
    price: str
    order: str
    commission: str
    fee: str
    swap: str
    profit: str
    balance: str
    comment: str
    position: Integer | None = None
    position_unknown: str | None = None


class Mt5ReportPayload(_Strict):
    kind: Literal["mt5.report"]
    account: ReportAccountRef
    clock: str  # server_clock's spec: how the report's times read in UTC
    file: str
    deals: list[Any]
    balance: ReportBalance | None = None


# --- building the payloads (the import command) ----------------------------------------------


@dataclass(frozen=True)
class RefusedRow:
    """A Deals row the journal cannot take, with its row in the file and the reason."""

    row: int
    deal: str
    code: str
    detail: str


@dataclass(frozen=True)
class CheckedRows:
    """A report's Deals rows split into those that map and those that do not."""

    accepted: tuple[DealRow, ...]
    refused: tuple[RefusedRow, ...]


def check_rows(deals: ReportDeals, clock: ServerClock, received_at: datetime) -> CheckedRows:
    """Each row mapped as the normalizer will map it: a row it would refuse is not published
    (its reason goes to the person importing, who can fix it and import again), so a report of
    old history never spends its tenant's dead letters."""
    prefix = account_prefix("import-check", deals.account.login)
    accepted: list[DealRow] = []
    refused: list[RefusedRow] = []
    for row in deals.deals:
        outcome = mapped_or_rejected(
            row.row,
            row.item(),
            partial(_map_item, row.item(), prefix, clock, received_at),
            invalid_code="invalid_deal",
        )
        if isinstance(outcome, Rejection):
            deal = row.cells.get("deal", "")
            refused.append(RefusedRow(row.row, deal, outcome.code, outcome.detail))
        else:
            accepted.append(row)
    return CheckedRows(tuple(accepted), tuple(refused))


def report_payloads(
    deals: ReportDeals, rows: Sequence[DealRow], *, server: str, clock: ServerClock, file: str
) -> list[tuple[str, bytes]]:
    """`rows` (of `deals`) as (delivery id, body) chunks in the report's order, each far below
    the topic's message size; the last also carries the balance after the report's last deal.
    A delivery id is the account's and its deals' tickets', so importing a report again is the
    same deliveries (the same event ids)."""
    account = {
        "login": deals.account.login,
        "server": server,
        "currency": deals.account.currency,
    }
    chunks: list[list[DealRow]] = []
    size = 0
    for row in rows:
        encoded = len(orjson.dumps(row.item())) + 1
        if not chunks or size + encoded > MAX_CHUNK_BYTES or len(chunks[-1]) >= MAX_CHUNK_DEALS:
            chunks.append([])
            size = _ENVELOPE_BYTES
        chunks[-1].append(row)
        size += encoded
    balance = _last_balance(deals.deals)
    payloads = []
    for number, chunk in enumerate(chunks, start=1):
        body = {
            "kind": KIND,
            "account": account,
            "clock": clock.spec,
            "file": file,
            "deals": [row.item() for row in chunk],
            "balance": balance if number == len(chunks) else None,
        }
        payloads.append((_delivery_id(deals.account.login, chunk), orjson.dumps(body)))
    return payloads


def _delivery_id(login: int, chunk: Sequence[DealRow]) -> str:
    tickets = [r.cells.get("deal") or f"row{r.row}" for r in chunk]
    digest = hashlib.sha256(",".join(tickets).encode()).hexdigest()[:16]
    return f"mt5-report-{login}-{tickets[0]}-{tickets[-1]}-{len(tickets)}-{digest}"


def _last_balance(rows: Sequence[DealRow]) -> dict[str, str] | None:
    """The Balance cell of the report's latest deal with a readable time and balance: the table
    is in time order, and of deals in one second the later row is the later deal."""
    latest: tuple[datetime, dict[str, str]] | None = None
    for row in rows:
        try:
            when = report_time(row.cells["time"])
            report_number(row.cells["balance"])
        except (KeyError, ValueError):
            continue
        if latest is None or when >= latest[0]:
            balance = {
                "amount": row.cells["balance"],
                "time": row.cells["time"],
                "deal": row.cells.get("deal", ""),
            }
            latest = (when, balance)
    return latest[1] if latest else None


# --- mapping (the normalizer) -----------------------------------------------------------------


def _check_account(event: RawEvent, account: ReportAccountRef) -> None:
    connection = event.connection
    if str(account.login) != connection.account_number or account.server != connection.server:
        raise InvalidEvent(
            "account_mismatch",
            f"the report is of login {account.login} on {account.server!r}, the connection of "
            f"{connection.account_number} on {connection.server!r}",
        )


def _ticket(text: str, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise InvalidEvent("invalid_deal", f"{what} {text!r} is not a ticket number") from None
    if not 0 <= value <= _ULONG_MAX:
        raise InvalidEvent("invalid_deal", f"{what} {text!r} is not a ticket number")
    return value


def _number(text: str, what: str, *, blank_is_zero: bool = True) -> Any:
    if not text and blank_is_zero:
        return report_number("0")
    try:
        return report_number(text)
    except ValueError as exc:
        raise InvalidEvent("invalid_deal", f"{what}: {exc}") from None


def read_report_deal(item: ReportDealItem, clock: ServerClock) -> Mt5Deal:
    """A Deals row as the deal MT5 knows; InvalidEvent saying what in the row is wrong."""
    deal_type = REPORT_DEAL_TYPES.get(item.type.lower())
    if deal_type is None:
        raise InvalidEvent("unknown_deal_type", f"deal type {item.type!r} is not known")
    trade = deal_type in _TRADE_TYPES
    entry = DIRECTIONS.get(item.direction.lower()) if trade else 0
    if entry is None:
        raise InvalidEvent("invalid_deal", f"direction {item.direction!r} is not known")
    try:
        wall = report_time(item.time)
    except ValueError as exc:
        raise InvalidEvent("invalid_deal", str(exc)) from None
    if trade and item.position is None:
        raise InvalidEvent(
            "position_unknown", item.position_unknown or "the deal's position is not known"
        )
    return Mt5Deal(
        ticket=_ticket(item.deal, "deal"),
        order=_ticket(item.order, "order") if item.order else 0,
        position_id=item.position or 0,
        deal_type=deal_type,
        entry=entry,
        volume=_number(item.volume, "volume", blank_is_zero=not trade),
        price=_number(item.price, "price", blank_is_zero=not trade),
        commission=_number(item.commission, "commission"),
        swap=_number(item.swap, "swap"),
        fee=_number(item.fee, "fee"),
        profit=_number(item.profit, "profit"),
        symbol=item.symbol,
        comment=item.comment,
        executed_at=clock.to_utc(wall),
        server_time_msc=wall_clock_msc(wall),
    )


def _map_item(
    item: Any, prefix: str, clock: ServerClock, received_at: datetime
) -> Fill | CashMovement:
    mapped = canonical_deal(read_report_deal(ReportDealItem.model_validate(item), clock), prefix)
    check_plausible_time(mapped, received_at)
    return mapped


def _snapshot(balance: ReportBalance, currency: str | None, clock: ServerClock) -> AccountSnapshot:
    as_of = clock.to_utc(report_time(balance.time))
    return AccountSnapshot(
        currency=currency,
        balance=report_number(balance.amount),
        as_of=as_of,
        deals_through=as_of,
    )


def map_event(event: RawEvent) -> MappedEvent:
    payload = parse_json_payload(event.body, Mt5ReportPayload)
    _check_account(event, payload.account)
    try:
        clock = server_clock(payload.clock)
    except ValueError as exc:
        raise InvalidEvent("invalid_payload", str(exc)) from None
    prefix = account_prefix(payload.account.server, payload.account.login)
    items = MappedItems()
    for index, item in enumerate(payload.deals):
        items.map(
            index,
            item,
            partial(_map_item, item, prefix, clock, event.received_at),
            invalid_code="invalid_deal",
        )
    snapshot = None
    if payload.balance is not None:
        balance = payload.balance
        snapshot = items.account(
            balance.model_dump(),
            lambda: _snapshot(balance, payload.account.currency, clock),
            invalid_code="invalid_account",
        )
    return items.event(event, snapshot)
