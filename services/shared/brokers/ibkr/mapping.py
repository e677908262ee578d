"""Interactive Brokers Flex: the executions of a `FlexQueryResponse` into canonical fills."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Mapping as AttributeMap
from dataclasses import dataclass
from decimal import Decimal
from functools import partial
from typing import Any

from services.shared.brokers import MappedEvent, PayloadOwner, Rejection, Skipped
from services.shared.brokers.ibkr.flex import FlexXmlError, eastern_to_utc, read_flex_xml
from services.shared.brokers.items import MappedItems, check_plausible_time, mapped_or_rejected
from services.shared.canonical import Fill, FillEntry, Side
from services.shared.envelope import ConnectionRef, RawEvent
from services.shared.errors import InvalidEvent

_DECIMAL = re.compile(r"^-?\d+(\.\d+)?$")
_ID = re.compile(r"^\d{1,20}$")
# Flex writes "no id" as an empty attribute or as "0".
_NO_ID = frozenset({"", "0"})
_ENTRIES: dict[str, FillEntry] = {"O": "in", "C": "out", "C;O": "inout"}
_UNKNOWN_ENTRY = frozenset({"", "-"})
_SIDES: dict[str, tuple[Side, bool]] = {
    "BUY": ("buy", False),
    "SELL": ("sell", False),
    "BUY (Ca.)": ("buy", True),
    "SELL (Ca.)": ("sell", True),
}
_CANCEL_TYPES = frozenset({"TradeCancel", "FracShareCancel"})
_ZERO = Decimal(0)


_CHARGES = (("ibCommission", "commission"), ("taxes", "taxes"))


def _charges_comment(row: AttributeMap[str, str]) -> str | None:
    """The row's notes plus the charges IBKR already netted into its realized P/L."""
    charges = ((label, _decimal(row, name, _ZERO)) for name, label in _CHARGES)
    parts = [f"{label} {amount}" for label, amount in charges if amount != 0]
    notes = _text(row, "notes")
    if notes:
        parts.insert(0, notes)
    return "; ".join(parts) or None


def parse_flex(body: bytes) -> ET.Element:
    """The document's root element; InvalidEvent (`malformed_xml`) for what is no Flex XML."""
    try:
        return read_flex_xml(body)
    except FlexXmlError as exc:
        raise InvalidEvent("malformed_xml", str(exc)) from None


def _statements(root: ET.Element, connection: ConnectionRef) -> list[tuple[str, ET.Element]]:
    if root.tag != "FlexQueryResponse":
        detail = f"expected a FlexQueryResponse, got {root.tag}"
        if root.tag == "FlexStatementResponse":
            detail += ": " + " ".join(f"{e.tag}={(e.text or '').strip()}" for e in root)
        raise InvalidEvent("invalid_payload", detail)
    statements = root.findall("./FlexStatements/FlexStatement")
    if not statements:
        raise InvalidEvent("invalid_payload", "the response holds no FlexStatement")
    for statement in statements:
        account = statement.get("accountId")
        if account != connection.account_number:
            raise InvalidEvent(
                "account_mismatch",
                f"statement is for account {account}, the connection is for "
                f"{connection.account_number}",
            )
    return [(connection.account_number, s) for s in statements]


# --- reading one row's attributes -----------------------------------------------------------


def _text(row: AttributeMap[str, str], name: str) -> str | None:
    value = row.get(name, "").strip()
    return value or None


def _id(row: AttributeMap[str, str], name: str) -> str | None:
    value = row.get(name, "").strip()
    if value in _NO_ID:
        return None
    if not _ID.match(value):
        raise InvalidEvent("invalid_trade", f"{name}: {value!r} is not an IBKR id")
    return value


def _decimal(row: AttributeMap[str, str], name: str, default: Decimal | None = None) -> Decimal:
    value = row.get(name, "").strip()
    if not value and default is not None:
        return default
    if not _DECIMAL.match(value):
        raise InvalidEvent("invalid_trade", f"{name}: {value!r} is not a decimal number")
    return Decimal(value) + 0  # + 0: "-0" is plain zero


def _broker_time(row: AttributeMap[str, str]) -> str:
    if (stamp := _text(row, "dateTime")) is not None:
        return stamp
    date, time = _text(row, "tradeDate"), _text(row, "tradeTime")
    if date is None or time is None:
        raise InvalidEvent("invalid_trade", "an execution needs dateTime or tradeDate+tradeTime")
    return f"{date};{time}"


# --- one row --------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Mapped:
    fill: Fill
    # Built from a cancellation or a correction: stands in for an original not seen here.
    stand_in: bool = False


def _row_ref(row: AttributeMap[str, str]) -> str | None:
    for name in ("tradeID", "transactionID", "ibOrderID"):
        value = row.get(name, "").strip()
        if value not in _NO_ID:
            return value
    return None


def _skip(index: int, element: ET.Element, row: AttributeMap[str, str]) -> Skipped | None:
    """Why this row is not an execution to map, if it is not."""
    ref = _row_ref(row)
    if element.tag != "Trade":
        return Skipped(index, element.tag, ref, f"a <{element.tag}> element is not an execution")
    level = _text(row, "levelOfDetail")
    if level is None:
        raise InvalidEvent("invalid_trade", "no levelOfDetail: the Flex query must include it")
    if level != "EXECUTION":
        return Skipped(index, "Trade", ref, f"level of detail {level}, not EXECUTION")
    if "AFx" in _notes(row):
        return Skipped(index, "Trade", ref, "automatic FX conversion (AFx), not a trade")
    if _decimal(row, "quantity") == 0:
        kind = _text(row, "transactionType") or "Trade"
        return Skipped(index, "Trade", ref, f"zero-quantity {kind} moves no position")
    return None


def _notes(row: AttributeMap[str, str]) -> set[str]:
    return {code.strip() for code in row.get("notes", "").split(";") if code.strip()}


def _side(row: AttributeMap[str, str], quantity: Decimal) -> tuple[Side, bool]:
    """The execution's side, and whether its buySell marks it a cancellation."""
    label = _text(row, "buySell")
    if label is None:
        return ("buy" if quantity > 0 else "sell"), False
    if label not in _SIDES:
        raise InvalidEvent("invalid_trade", f"buySell: {label!r} is not known")
    return _SIDES[label]


def _entry(row: AttributeMap[str, str], side: Side) -> FillEntry:
    indicator = row.get("openCloseIndicator", "").strip()
    if indicator in _UNKNOWN_ENTRY:
        return "in" if side == "buy" else "out"
    if indicator not in _ENTRIES:
        raise InvalidEvent("invalid_trade", f"openCloseIndicator: {indicator!r} is not known")
    return _ENTRIES[indicator]


def _own_id(row: AttributeMap[str, str]) -> str | None:
    return _id(row, "tradeID") or _id(row, "transactionID")


def _original_id(row: AttributeMap[str, str], by_transaction: dict[str, str]) -> str | None:
    if (trade := _id(row, "origTradeID")) is not None:
        return trade
    if (transaction := _id(row, "origTransactionID")) is not None:
        return by_transaction.get(transaction, transaction)
    return None


def _map_row(
    row: AttributeMap[str, str], account: str, by_transaction: dict[str, str]
) -> list[_Mapped]:
    if (row_account := _text(row, "accountId")) is not None and row_account != account:
        raise InvalidEvent("account_mismatch", f"row is for account {row_account}")
    symbol = _text(row, "symbol")
    if symbol is None:
        raise InvalidEvent("invalid_trade", "an execution needs a symbol")
    own = _own_id(row)
    if own is None:
        raise InvalidEvent("invalid_trade", "an execution needs a tradeID or transactionID")
    instrument = _id(row, "conid") or symbol
    quantity = _decimal(row, "quantity")
    side, labelled_cancel = _side(row, quantity)
    notes = _notes(row)
    cancels = labelled_cancel or "Ca" in notes or _text(row, "transactionType") in _CANCEL_TYPES
    broker_time = _broker_time(row)
    prefix = f"ibkr:{account}"
    price = _decimal(row, "tradePrice")
    original_price = _decimal(row, "origTradePrice", _ZERO) or price
    order = _id(row, "ibOrderID")
    fill = Fill(
        fill_key=f"{prefix}:exec:{own}",
        position_key=f"{prefix}:{instrument}",
        symbol=symbol,
        side=side,
        entry=_entry(row, side),
        volume=abs(quantity),
        price=price,
        profit=_decimal(row, "fifoPnlRealized", _ZERO),
        # Already inside fifoPnlRealized: kept for reading, not booked twice.
        commission=_ZERO,
        fee=_ZERO,
        executed_at=eastern_to_utc(broker_time),
        broker_time=broker_time,
        broker_ref=own,
        order_ref=order,
        comment=_charges_comment(row),
    )
    original = _original_id(row, by_transaction)
    if cancels:
        if original is None:
            raise InvalidEvent("invalid_trade", "a cancellation must name the trade it cancels")
        # The cancellation reverses its original: negated, its amounts are the original's.
        return [
            _Mapped(
                fill.model_copy(
                    update={
                        "fill_key": f"{prefix}:exec:{original}",
                        "price": original_price,
                        "profit": _ZERO - fill.profit,
                        "broker_ref": original,
                        "order_ref": _id(row, "origOrderID") or order,
                        "cancelled": True,
                    }
                ),
                stand_in=True,
            )
        ]
    corrects = "Co" in notes or _text(row, "transactionType") == "TradeCorrect"
    if original is None:
        if corrects:
            raise InvalidEvent("invalid_trade", "a correction must name the trade it corrects")
        return [_Mapped(fill)]
    if original == own:
        return [_Mapped(fill)]
    # A correction: the original no longer counts (its own amounts are not known here).
    replaced = fill.model_copy(
        update={
            "fill_key": f"{prefix}:exec:{original}",
            "price": original_price,
            "profit": _ZERO,
            "commission": _ZERO,
            "fee": _ZERO,
            "broker_ref": original,
            "order_ref": _id(row, "origOrderID") or order,
            "cancelled": True,
        }
    )
    return [_Mapped(replaced, stand_in=True), _Mapped(fill)]


# --- the document ---------------------------------------------------------------------------


class _Fills:
    """Each execution once, in document order; any cancellation of it marks it cancelled."""

    def __init__(self) -> None:
        self._fills: dict[str, Fill] = {}
        self._stand_ins: set[str] = set()

    def add(self, mapped: _Mapped) -> bool:
        """Whether the fill was new or changed what is known; False for a repeated row."""
        key = mapped.fill.fill_key
        existing = self._fills.get(key)
        if existing is None:
            self._fills[key] = mapped.fill
            if mapped.stand_in:
                self._stand_ins.add(key)
            return True
        if mapped.stand_in:
            self._fills[key] = existing.model_copy(update={"cancelled": True})
            return True
        if key in self._stand_ins:  # the original itself, after its cancellation
            self._fills[key] = mapped.fill.model_copy(update={"cancelled": True})
            self._stand_ins.discard(key)
            return True
        return False

    def all(self) -> tuple[Fill, ...]:
        return tuple(self._fills.values())


def _rows(statements: list[tuple[str, ET.Element]]) -> list[tuple[str, ET.Element]]:
    return [
        (account, element)
        for account, statement in statements
        for section in statement.findall("Trades")
        for element in section
    ]


def _transaction_index(rows: list[tuple[str, ET.Element]]) -> dict[str, str]:
    """transactionID -> the id the execution is keyed by, for origTransactionID references."""
    index: dict[str, str] = {}
    for _, element in rows:
        transaction = element.get("transactionID", "").strip()
        trade = element.get("tradeID", "").strip()
        if element.tag == "Trade" and transaction not in _NO_ID and trade not in _NO_ID:
            index[transaction] = trade
    return index


def _skip_or_map(
    index: int,
    element: ET.Element,
    account: str,
    by_transaction: dict[str, str],
    event: RawEvent,
) -> Skipped | list[_Mapped]:
    if (skip := _skip(index, element, element.attrib)) is not None:
        return skip
    mapped = _map_row(element.attrib, account, by_transaction)
    for each in mapped:
        check_plausible_time(each.fill, event.received_at)
    return mapped


def map_event(event: RawEvent) -> MappedEvent:
    """The event's executions as fills, each once; every other row skipped or rejected alone.

    The body (application/xml) is the Flex Web Service's GetStatement document verbatim. Only
    `<Trade levelOfDetail="EXECUTION">` rows are fills; order and closed-lot summaries,
    `<Order>` rows and automatic FX conversions are skipped and recorded. IBKR positions are per
    instrument (`ibkr:{accountId}:{conid}`), so one key sees round trip after round trip: the
    writer starts a new journal row each time the position has gone flat.

    Decisions where the Flex data leaves room:
    - An execution is keyed by its `tradeID` (else `transactionID`): the id a cancellation or a
      correction names as `origTradeID`, so the cancelled fill meets its original even when the
      two arrive in different statements. `origTransactionID` alone is resolved within the
      document.
    - A cancellation ("Ca") is its original's fill marked cancelled; it reverses the original,
      so its negated amounts are the original's. A correction ("Co", or `origTradeID` on a
      normal row) cancels the original and adds the corrected execution. Within one document
      each execution is one fill: the original's own row wins over what its cancellation
      reconstructs.
    - Without `openCloseIndicator` (FX rows carry none), a buy opens and a sell closes.
    - `profit` is `fifoPnlRealized`, which IBKR nets of the commissions and taxes of both the
      opening and the closing execution. A gross figure cannot be rebuilt from one row, so the
      charges are not booked again: `commission` and `fee` stay 0 (the row's `ibCommission` and
      `taxes` are kept in the comment), and a journal row's profit + commission + fees is the
      account's real result, as it is for every other broker.
    - Zero-quantity rows (BookTrade adjustments) move no position: skipped and recorded.
    - Times are US/Eastern wall clock; an hour the autumn change repeats reads as its first
      (EDT).
    """
    statements = _statements(parse_flex(event.body), event.connection)
    rows = _rows(statements)
    by_transaction = _transaction_index(rows)
    items = MappedItems()
    fills = _Fills()  # each execution once: this mapper settles its fills itself
    for index, (account, element) in enumerate(rows):
        outcome = mapped_or_rejected(
            index,
            _item(element),
            partial(_skip_or_map, index, element, account, by_transaction, event),
            invalid_code="invalid_trade",
        )
        if isinstance(outcome, Rejection | Skipped):
            items.keep(outcome)
        elif not any([fills.add(m) for m in outcome]):
            items.keep(
                Skipped(index, "Trade", _row_ref(element.attrib), "the same execution again")
            )
    return items.event(event, fills=fills.all())


def _item(element: ET.Element) -> dict[str, Any]:
    """The rejected row as JSON-safe data: its element name and attributes as written."""
    return {"element": element.tag, **element.attrib}


def payload_owner(body: bytes) -> PayloadOwner | None:
    """The IBKR account a Flex statement names, or None."""
    try:
        statement = parse_flex(body).find("./FlexStatements/FlexStatement")
    except InvalidEvent:
        return None
    account = None if statement is None else statement.get("accountId")
    return PayloadOwner(account) if account else None
