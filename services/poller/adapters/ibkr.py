"""IBKR Flex Web Service (v3): the connection's Flex query, run in two steps (SendRequest, then
GetStatement until the statement is ready) and handed over as FlexQueryResponse XML the ibkr
mapper reads.

The Flex service has no "since" parameter: the query's own period decides which trades come
back, so the same trades come back poll after poll. The cursor is the newest trade time handed
over, as `yyyyMMdd;HHmmss` (US/Eastern wall clock, as IBKR writes it), and a poll hands over
only what is newer:

- A statement that starts (FlexStatement@fromDate) on a later day than the cursor may have
  passed trades by: they were in no statement polled. A trade-time cursor cannot tell "no
  trades since" (an account quiet for longer than the query's period) from "trades missed"
  (the poller was away that long), so this is a warning (`alert=flex_period_gap`, naming both
  days and the fix: a longer query period, e.g. Last 365 Calendar Days, or a re-run of the
  missing history), and the statement is still handed over: stopping would lose what it has.
- A statement over MAX_PAGE_BYTES is handed over in parts, each a FlexQueryResponse with the
  statement's own attributes and some of its <Trades> rows. Rows linked by their ids (an
  execution, its cancellation or correction, its closed lots) stay in one part. Parts go out
  in the order of their newest row.
- A part (or a statement that fits in one) whose rows are all at or before the cursor was
  handed over before and is skipped, so an unchanged statement publishes nothing. A
  cancellation or correction of an old trade has its own, newer time: its part (with the
  original) goes out again. An execution reported only later with a time at or before the
  cursor would be missed; Flex reports the executions of one second together.
- A part's delivery id is a digest of its <Trades> rows (not of `whenGenerated`), so the same
  part generated again is the same event downstream. Each part's cursor is its newest row time
  (one second less when the next part has rows of that same second), so a crash between two
  parts re-polls the ones not yet acknowledged.
- Trade times are read with the mapper's own `parse_flex_time`: a format the mapper refuses
  stops the poll here (UnexpectedResponse) rather than being dead-lettered downstream.

The token travels in the query string (`t=`), which is why messages name request targets
without their query and why httpx's request log lines are redacted.
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import json
import re
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal
from urllib.parse import urlsplit

import defusedxml.ElementTree as SafeET
from aiolimiter import AsyncLimiter
from defusedxml import DefusedXmlException

from services.normalizer.mappers.ibkr import parse_flex_time
from services.poller.adapters import (
    AdapterContext,
    BrokerAdapter,
    BrokerUnavailable,
    CredentialsRejected,
    Delta,
)
from services.poller.adapters._errors import (
    AccountMismatch,
    BrokerRequestFailed,
    CredentialsUnreadable,
    PeriodGap,
    UnexpectedResponse,
)
from services.poller.adapters._http_calls import (
    BrokerHttp,
    HostHoldOffs,
    RetryPolicy,
    Sleep,
    redact,
    redact_query_tokens_in_httpx_logs,
    shared_limiter,
)
from services.shared.errors import InvalidEvent
from services.shared.logging import get_logger

DEFAULT_URL = "https://ndcdyn.interactivebrokers.com"
SEND_REQUEST_PATH = "/AccountManagement/FlexWebService/SendRequest"
FLEX_VERSION = "3"
USER_AGENT = "poscal-broker-sync/0.1 (Flex Web Service v3)"  # Flex refuses requests without one
CONTENT_TYPE = "application/xml"
# A page's body at most, as for OANDA (see MAX_PAGE_BYTES there): the raw event carries it in
# base64, and it must stay well under Kafka's message limit, dead-lettered or not.
MAX_PAGE_BYTES = 512 * 1024
_IBKR_DOMAIN = ".interactivebrokers.com"

# Flex error codes (FlexStatementResponse/ErrorCode), by what the poller should do about them.
CREDENTIAL_CODES = frozenset(
    {"1011", "1012", "1013", "1015"}  # account inactive, token expired, IP restricted, invalid
)
RETRY_NOW_CODES = frozenset(
    {"1001", "1009", "1018", "1019", "1021"}  # busy, too many requests, generation in progress
)
RETRY_LATER_CODES = frozenset(
    {"1003", "1004", "1005", "1006", "1007", "1008"}  # statement or its data not ready yet
)

FlexVerdict = Literal["credentials", "retry_now", "retry_later", "refused"]
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
_log = get_logger(__name__)

# What `poscal-sync connections set-credentials` asks for: a Flex Web Service token and the id
# of the Flex query (with a Trades section) it runs.
CREDENTIAL_FIELDS = ("token", "query_id")


@dataclass(frozen=True)
class FlexOptions:
    # Flex allows about one request per second per token; each connection has its own token.
    requests_per_second: float = 1.0
    page_bytes: int = MAX_PAGE_BYTES
    http_retry: RetryPolicy = field(default_factory=RetryPolicy)
    # Waiting for a statement to be generated (1019) or for a busy server (1009, 1018).
    statement_retry: RetryPolicy = field(
        default_factory=lambda: RetryPolicy(
            tries=8, backoff_base_seconds=2.0, backoff_cap_seconds=30.0
        )
    )
    least_wait_seconds: float = 1.0  # full jitter alone could ask again at once and earn a 1018


@dataclass(frozen=True)
class FlexCredentials:
    token: str = field(repr=False)
    query_id: str


@dataclass(frozen=True)
class FlexStatus:
    """A FlexStatementResponse: step one's answer, or step two's "not yet"/"no"."""

    status: str
    reference_code: str | None = None
    url: str | None = None
    error_code: str | None = None
    error_message: str | None = None


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


def read_credentials(credentials: bytes) -> FlexCredentials:
    expected = 'JSON {"token": ..., "query_id": ...}'
    try:
        # `from None`: a JSONDecodeError keeps the whole input (the token) in its `doc`.
        document = json.loads(credentials)
    except (ValueError, UnicodeDecodeError):
        raise CredentialsUnreadable("ibkr", expected) from None
    token = document.get("token") if isinstance(document, dict) else None
    query_id = document.get("query_id") if isinstance(document, dict) else None
    if isinstance(query_id, int) and not isinstance(query_id, bool):
        query_id = str(query_id)
    if not (isinstance(token, str) and token.strip() and isinstance(query_id, str)):
        raise CredentialsUnreadable("ibkr", expected)
    if not query_id.strip().isdigit():
        raise CredentialsUnreadable("ibkr", "a Flex query id made of digits")
    return FlexCredentials(token=token.strip(), query_id=query_id.strip())


def parse_flex_xml(body: bytes, target: str) -> ET.Element:
    try:
        root: ET.Element = SafeET.fromstring(body)
    except (ET.ParseError, DefusedXmlException) as exc:
        raise UnexpectedResponse("ibkr", target, f"not XML ({type(exc).__name__})") from None
    return root


def read_status(root: ET.Element) -> FlexStatus:
    def text(tag: str) -> str | None:
        value = root.findtext(tag)
        return value.strip() if value is not None and value.strip() else None

    return FlexStatus(
        status=text("Status") or "",
        reference_code=text("ReferenceCode"),
        url=text("Url"),
        error_code=text("ErrorCode"),
        error_message=text("ErrorMessage"),
    )


def flex_verdict(error_code: str | None) -> FlexVerdict:
    if error_code in CREDENTIAL_CODES:
        return "credentials"
    if error_code in RETRY_NOW_CODES:
        return "retry_now"
    if error_code in RETRY_LATER_CODES:
        return "retry_later"
    return "refused"


def statement_url(returned: str, api_url: str | None) -> str:
    """Where step two goes. With an override, the override's origin keeps the returned path;
    otherwise the returned Url must be IBKR's own over https, since the token goes along."""
    parts = urlsplit(returned)
    if api_url:
        return f"{api_url.rstrip('/')}{parts.path}"
    host = parts.hostname or ""
    if parts.scheme != "https" or not (host == _IBKR_DOMAIN[1:] or host.endswith(_IBKR_DOMAIN)):
        raise UnexpectedResponse(
            "ibkr", SEND_REQUEST_PATH, f"the statement Url is not on IBKR over https: {host!r}"
        )
    return f"https://{parts.netloc}{parts.path}"


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


def _rows(root: ET.Element, section: str) -> list[dict[str, Any]]:
    return [dict(row.attrib) for found in root.iter(section) for row in found]


class IbkrFlexAdapter:
    def __init__(
        self,
        context: AdapterContext,
        options: FlexOptions | None = None,
        *,
        sleep: Sleep = asyncio.sleep,
        limiter: AsyncLimiter | None = None,
        hold_offs: HostHoldOffs | None = None,
    ) -> None:
        self._context = context
        self._options = options or FlexOptions()
        self._sleep = sleep
        self._limiter = limiter
        self._hold_offs = hold_offs
        self._base = (context.api_url or DEFAULT_URL).rstrip("/")
        self._account = context.connection.account_number
        # Flex is slow and rate limited, and one statement holds every section the query asks
        # for: `authenticate` fetches the statement the next `fetch_closed_trades` hands over,
        # and the account and open trades come from the latest statement.
        self._prefetched: tuple[bytes, ET.Element] | None = None
        self._statement: tuple[bytes, ET.Element] | None = None
        redact_query_tokens_in_httpx_logs()

    def __repr__(self) -> str:
        return f"IbkrFlexAdapter({self._account}, {self._base})"

    async def authenticate(self) -> None:
        # A SendRequest alone would prove the token too, but the poller asks for the trades
        # right after, and Flex allows about one request a second: fetch the statement now.
        self._prefetched = await self._fresh_statement()

    async def fetch_account(self) -> dict[str, Any]:
        _, root = await self._latest_statement()
        statement = root.find(".//FlexStatement")
        account: dict[str, Any] = dict(statement.attrib) if statement is not None else {}
        information = root.find(".//AccountInformation")
        if information is not None:
            account["accountInformation"] = dict(information.attrib)
        return account

    async def fetch_open_trades(self) -> list[dict[str, Any]]:
        _, root = await self._latest_statement()
        return _rows(root, "OpenPositions")

    async def fetch_closed_trades(self, cursor: str | None) -> AsyncIterator[Delta]:
        previous = read_cursor(cursor)
        prefetched, self._prefetched = self._prefetched, None
        body, root = prefetched or await self._fresh_statement()
        gap = check_period(root, previous)
        if gap is not None:
            _log.warning(
                "the Flex statement may have passed trades by",
                alert="flex_period_gap",
                connection_id=str(self._context.connection.connection_id),
                detail=str(gap),
            )
        digest = digest_statement(root)
        if digest.trade_rows == 0 or (previous is not None and digest.newest_trade is None):
            return
        parts = [
            part
            for part in statement_parts(body, root, self._options.page_bytes)
            if previous is None or part.newest_trade > previous
        ]
        cursors = part_cursors([part.newest_trade for part in parts])
        for part, next_cursor in zip(parts, cursors, strict=True):
            if len(part.body) > self._options.page_bytes:  # rows that cannot be parted
                _log.warning(
                    "ibkr_page_over_budget",
                    delivery_id=delivery_id(self._account, part.trades_sha256),
                )
            yield Delta(
                body=part.body,
                content_type=CONTENT_TYPE,
                delivery_id=delivery_id(self._account, part.trades_sha256),
                next_cursor=next_cursor,
            )

    async def _latest_statement(self) -> tuple[bytes, ET.Element]:
        """The statement this adapter fetched last, else a new one."""
        return self._statement or await self._fresh_statement()

    async def _fresh_statement(self) -> tuple[bytes, ET.Element]:
        step_one = await self._send_request()
        if step_one.reference_code is None or step_one.url is None:
            raise UnexpectedResponse(
                "ibkr", SEND_REQUEST_PATH, "Success without a ReferenceCode and Url"
            )
        url = statement_url(step_one.url, self._context.api_url)
        body, root = await self._flex_step(url, step_one.reference_code)
        if root.tag != "FlexQueryResponse":
            raise UnexpectedResponse("ibkr", url, f"a <{root.tag}> instead of the statement")
        for account in statement_accounts(root):
            if account != self._account:
                raise AccountMismatch("ibkr", self._account, account)
        self._statement = (body, root)
        return self._statement

    async def _send_request(self) -> FlexStatus:
        credentials = read_credentials(self._context.credentials)
        _, root = await self._flex_step(f"{self._base}{SEND_REQUEST_PATH}", credentials.query_id)
        if root.tag != "FlexStatementResponse":
            raise UnexpectedResponse("ibkr", SEND_REQUEST_PATH, f"a <{root.tag}> answer")
        return read_status(root)

    async def _flex_step(self, url: str, query: str) -> tuple[bytes, ET.Element]:
        """One Flex step, asked again while IBKR says "busy" or "in progress"."""
        credentials = read_credentials(self._context.credentials)
        retry = self._options.statement_retry
        backoff = retry.backoff()
        status = FlexStatus(status="")
        for attempt in range(1, retry.tries + 1):
            response = await self._http().get(
                url,
                params={"t": credentials.token, "q": query, "v": FLEX_VERSION},
                headers={"User-Agent": USER_AGENT},
                secrets=[credentials.token],
            )
            root = parse_flex_xml(response.content, url)  # `url` has no query, so no token
            if root.tag != "FlexStatementResponse":
                return response.content, root
            status = read_status(root)
            if status.status == "Success":
                return response.content, root
            self._raise_unless_worth_waiting(status, url, [credentials.token])
            if attempt < retry.tries:
                await self._sleep(max(self._options.least_wait_seconds, backoff.next_delay()))
        message = redact(status.error_message or "", [credentials.token])
        raise BrokerUnavailable(
            f"ibkr {url} still answered {status.error_code} ({message}) after {retry.tries} tries"
        )

    @staticmethod
    def _raise_unless_worth_waiting(
        status: FlexStatus, target: str, secrets: Iterable[str]
    ) -> None:
        message = redact(status.error_message or status.status or "no message", secrets)
        detail = f"Flex error {status.error_code}: {message}"
        match flex_verdict(status.error_code):
            case "retry_now":
                return
            case "credentials":
                # Flex says so with HTTP 200 and a code; 401 is what it means.
                raise CredentialsRejected(401, detail)
            case "retry_later":
                raise BrokerUnavailable(f"ibkr {target}: {detail}")
            case "refused":
                raise BrokerRequestFailed(
                    "ibkr", target, message, error_code=status.error_code or status.status
                )

    def _http(self) -> BrokerHttp:
        if self._limiter is None:
            self._limiter = shared_limiter(
                f"ibkr:{self._context.connection.connection_id}",
                self._options.requests_per_second,
            )
        return BrokerHttp(
            "ibkr",
            self._context.http,
            self._limiter,
            self._options.http_retry,
            self._sleep,
            hold_offs=self._hold_offs,
        )


def create(context: AdapterContext) -> BrokerAdapter:
    return IbkrFlexAdapter(context)
