"""Handing a Flex statement over in pages, pure: each page's rows, its digest (its delivery id)
and its cursor. The rules and their reasons: `IbkrFlexAdapter.fetch_closed_trades` (adapter.py)."""

from __future__ import annotations

import copy
import hashlib
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from datetime import datetime, timedelta

from services.shared.brokers.errors import PeriodGap, UnexpectedResponse
from services.shared.brokers.ibkr.flex import parse_flex_time
from services.shared.errors import InvalidEvent

_CURSOR = re.compile(r"[0-9]{8};[0-9]{6}")

_CURSOR_FORMAT = "%Y%m%d;%H%M%S"

_FORMATS_READ = (
    "yyyyMMdd or yyyy-MM-dd, then HHmmss or HH:mm:ss, joined by ';', ',', a space or nothing"
)

_NO_ID = frozenset({"", "0"})  # how Flex writes "no id", as the mapper reads it

# Ids that tie rows together (an execution, what cancels or corrects it, its closed lots), by
# what they name: a trade or a transaction.
_LINKS = (
    ("tradeID", "trade"),
    ("origTradeID", "trade"),
    ("transactionID", "transaction"),
    ("origTransactionID", "transaction"),
)


@dataclass(frozen=True)
class StatementDigest:
    """What the adapter needs to know about a statement to hand it over."""

    trade_rows: int
    trades_sha256: str
    newest_trade: str | None  # yyyyMMdd;HHmmss


@dataclass(frozen=True)
class StatementPart:
    """One page of a statement: the whole statement when it fits, else some of its rows."""

    body: bytes
    trades_sha256: str
    newest_trade: str  # yyyyMMdd;HHmmss


def normalize_timestamp(value: str) -> str | None:
    """A Flex date-time, read as the ibkr mapper reads it, as `yyyyMMdd;HHmmss`; None for any
    format the mapper refuses."""
    try:
        return parse_flex_time(value.strip()).strftime(_CURSOR_FORMAT)
    except InvalidEvent:
        return None


def row_timestamp(attributes: dict[str, str]) -> str | None:
    """When a Trades row happened: its `dateTime`, else `tradeDate` and `tradeTime`, the way the
    mapper reads them; UnexpectedResponse for a format the mapper would refuse."""
    if attributes.get("dateTime"):
        raw = attributes["dateTime"]
    elif attributes.get("tradeDate"):
        raw = f"{attributes['tradeDate']};{attributes.get('tradeTime') or '000000'}"
    else:
        return None
    stamp = normalize_timestamp(raw)
    if stamp is None:
        raise UnexpectedResponse(
            "ibkr",
            "GetStatement",
            f"trade time {raw!r} is not in a format the ibkr mapper reads ({_FORMATS_READ}); "
            "set the Flex query's date format to yyyyMMdd or yyyy-MM-dd and its time format "
            "to HHmmss or HH:mm:ss",
        )
    return stamp


def statement_start(statement: ET.Element) -> str | None:
    """The day a FlexStatement starts (`fromDate`) as yyyyMMdd; None when it does not say."""
    raw = (statement.get("fromDate") or "").strip()
    if not raw:
        return None
    # A date is read as the date-time of its midnight: one reader for every Flex time.
    stamp = normalize_timestamp(f"{raw};000000")
    if stamp is None:
        raise UnexpectedResponse(
            "ibkr",
            "GetStatement",
            f"fromDate {raw!r} is not in a format the ibkr mapper reads (yyyyMMdd or "
            "yyyy-MM-dd); set the Flex query's date format to one of them",
        )
    return stamp[:8]


def check_period(root: ET.Element, cursor: str | None) -> PeriodGap | None:
    """The gap when a statement starts on a later day than the cursor's trade: what happened
    between them was in no statement polled (or nothing happened: the cursor cannot tell)."""
    if cursor is None:
        return None
    for statement in root.iter("FlexStatement"):
        starts = statement_start(statement)
        if starts is not None and starts > cursor[:8]:
            synced = _readable(cursor)
            return PeriodGap(
                "ibkr",
                f"{starts[:4]}-{starts[4:6]}-{starts[6:]} (the Flex query's period)",
                synced,
                f"widen the Flex query's period to start on or before {synced[:10]} (e.g. Last "
                "365 Calendar Days), or re-run the history for the days in between",
            )
    return None


def _readable(stamp: str) -> str:
    """yyyyMMdd;HHmmss as yyyy-MM-dd HH:mm:ss."""
    return f"{stamp[:4]}-{stamp[4:6]}-{stamp[6:8]} {stamp[9:11]}:{stamp[11:13]}:{stamp[13:15]}"


def digest_statement(root: ET.Element) -> StatementDigest:
    """Trade rows, a digest of the <Trades> sections and the newest trade time."""
    sections = list(root.iter("Trades"))
    digest = hashlib.sha256()
    stamps: list[str] = []
    rows = 0
    for section in sections:
        detached = copy.copy(section)
        detached.tail = None  # whitespace after the section is not part of it
        canonical = ET.canonicalize(ET.tostring(detached, encoding="unicode"), strip_text=True)
        digest.update(canonical.encode())
        for row in section:
            rows += 1
            stamp = row_timestamp(dict(row.attrib))
            if stamp is not None:
                stamps.append(stamp)
    return StatementDigest(
        trade_rows=rows,
        trades_sha256=digest.hexdigest(),
        newest_trade=max(stamps, default=None),
    )


def statement_accounts(root: ET.Element) -> list[str]:
    return [statement.get("accountId", "") for statement in root.iter("FlexStatement")]


def read_cursor(cursor: str | None) -> str | None:
    if cursor is not None and not _CURSOR.fullmatch(cursor):
        raise ValueError(f"an IBKR cursor is a trade time yyyyMMdd;HHmmss, not {cursor!r}")
    return cursor


def delivery_id(account: str, trades_sha256: str) -> str:
    return f"ibkr:{account}:{trades_sha256[:32]}"


@dataclass(frozen=True)
class _Row:
    index: int  # in document order
    statement: int
    element: ET.Element  # detached: no tail whitespace
    stamp: str | None
    size: int


def statement_parts(body: bytes, root: ET.Element, budget: int) -> list[StatementPart]:
    """The statement as pages of at most `budget` bytes, in the order of their newest row: the
    statement itself when it fits, else FlexQueryResponses holding every FlexStatement as it is
    (attributes, empty of all but <Trades>) with some of the rows. Rows linked by ids go
    together; a group of linked rows larger than `budget` is a page of its own, over it."""
    if len(body) <= budget:
        digest = digest_statement(root)
        if digest.newest_trade is None:
            raise UnexpectedResponse(
                "ibkr", "GetStatement", "trade rows carry no dateTime or tradeDate to resume from"
            )
        return [StatementPart(body, digest.trades_sha256, digest.newest_trade)]
    statements = root.findall("./FlexStatements/FlexStatement")
    if not statements:
        raise UnexpectedResponse(
            "ibkr", "GetStatement", "a <FlexQueryResponse> without FlexStatements/FlexStatement"
        )
    rows = _statement_rows(statements)
    stamps = [row.stamp for row in rows if row.stamp is not None]
    if not stamps:
        raise UnexpectedResponse(
            "ibkr", "GetStatement", "trade rows carry no dateTime or tradeDate to resume from"
        )
    # Rows without a time of their own go with the oldest: they never move the cursor.
    oldest = min(stamps)
    units = sorted(
        ((max(row.stamp or oldest for row in unit), unit) for unit in _linked_units(rows)),
        key=lambda keyed: (keyed[0], keyed[1][0].index),
    )
    overhead = len(_xml_bytes(_part_tree(root, statements, []))) + 16 * len(statements)
    packed: list[list[_Row]] = []
    newest_of: list[str] = []  # each packed part's newest row time
    size = overhead
    for newest, unit in units:
        unit_size = sum(row.size for row in unit)
        if not packed or size + unit_size > budget:
            packed.append([])
            newest_of.append(newest)
            size = overhead
        packed[-1].extend(unit)
        newest_of[-1] = newest
        size += unit_size
    parts = []
    for newest, part_rows in zip(newest_of, packed, strict=True):
        response = _part_tree(root, statements, sorted(part_rows, key=lambda row: row.index))
        body_of_part = _xml_bytes(response)
        parts.append(StatementPart(body_of_part, digest_statement(response).trades_sha256, newest))
    return parts


def part_cursors(newest: list[str]) -> list[str]:
    """Where the next poll starts once each part (in order, newest rows ascending) is
    acknowledged: its newest row time, or one second less when the next part has rows of that
    same second, so that part is not skipped as already handed over."""
    cursors = []
    for index, stamp in enumerate(newest):
        shared = index + 1 < len(newest) and newest[index + 1] == stamp
        cursors.append(_one_second_before(stamp) if shared else stamp)
    return cursors


def _one_second_before(stamp: str) -> str:
    moment = datetime.strptime(stamp, _CURSOR_FORMAT) - timedelta(seconds=1)
    return moment.strftime(_CURSOR_FORMAT)


def _statement_rows(statements: list[ET.Element]) -> list[_Row]:
    rows: list[_Row] = []
    for number, statement in enumerate(statements):
        for section in statement.findall("Trades"):
            for element in section:
                detached = copy.copy(element)
                detached.tail = None
                rows.append(
                    _Row(
                        index=len(rows),
                        statement=number,
                        element=detached,
                        stamp=row_timestamp(dict(element.attrib)),
                        size=len(_xml_bytes(detached)),
                    )
                )
    return rows


def _linked_units(rows: list[_Row]) -> list[list[_Row]]:
    """The rows grouped so that rows naming one another's ids are in one group."""
    parent = list(range(len(rows)))

    def root_of(index: int) -> int:
        while parent[index] != index:
            parent[index] = parent[parent[index]]
            index = parent[index]
        return index

    first_with: dict[tuple[int, str, str], int] = {}
    for row in rows:
        for attribute, names in _LINKS:
            value = (row.element.get(attribute) or "").strip()
            if value in _NO_ID:
                continue
            key = (row.statement, names, value)
            if key in first_with:
                parent[root_of(row.index)] = root_of(first_with[key])
            else:
                first_with[key] = row.index
    units: dict[int, list[_Row]] = {}
    for row in rows:
        units.setdefault(root_of(row.index), []).append(row)
    return list(units.values())


def _part_tree(root: ET.Element, statements: list[ET.Element], rows: list[_Row]) -> ET.Element:
    response = ET.Element(root.tag, dict(root.attrib))
    holder = root.find("FlexStatements")
    container = ET.SubElement(
        response, "FlexStatements", dict(holder.attrib) if holder is not None else {}
    )
    for number, statement in enumerate(statements):
        kept = ET.SubElement(container, "FlexStatement", dict(statement.attrib))
        section = statement.find("Trades")
        trades = ET.SubElement(kept, "Trades", dict(section.attrib) if section is not None else {})
        trades.extend(row.element for row in rows if row.statement == number)
    return response


def _xml_bytes(element: ET.Element) -> bytes:
    body: bytes = ET.tostring(element, encoding="utf-8")  # UTF-8: no XML declaration
    return body
