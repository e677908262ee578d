"""IBKR Flex Web Service (v3): the connection's Flex query, run in two steps (SendRequest, then
GetStatement until the statement is ready), handed over as FlexQueryResponse XML pages."""

from __future__ import annotations

import asyncio
import json
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field, replace
from typing import Any, Literal
from urllib.parse import urlsplit

import httpx
from aiolimiter import AsyncLimiter

from services.shared.brokers.discovery import DiscoveryRequest, FoundAccount
from services.shared.brokers.errors import (
    AccountMismatch,
    BrokerRequestFailed,
    BrokerUnavailable,
    CredentialsRejected,
    CredentialsUnreadable,
    UnexpectedResponse,
)
from services.shared.brokers.http import (
    BrokerHttp,
    HostHoldOffs,
    RetryPolicy,
    Sleep,
    redact,
    redact_query_tokens_in_httpx_logs,
    shared_limiter,
)
from services.shared.brokers.ibkr.flex import FlexXmlError, read_flex_xml
from services.shared.brokers.ibkr.statements import (
    check_period,
    delivery_id,
    digest_statement,
    part_cursors,
    read_cursor,
    statement_accounts,
    statement_parts,
)
from services.shared.brokers.polling import AdapterContext, BrokerAdapter, Delta
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
_log = get_logger(__name__)


@dataclass(frozen=True)
class FlexOptions:
    # Flex allows about one request per second per token; each connection has its own token.
    requests_per_second: float = 1.0
    page_bytes: int = MAX_PAGE_BYTES
    # One policy for every Flex request: a network or server failure, a busy server (1009,
    # 1018), or a statement still being generated (1019) are all asked again alike.
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
        return read_flex_xml(body)
    except FlexXmlError as exc:
        raise UnexpectedResponse("ibkr", target, f"not XML ({exc})") from None


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
        """The statement's trades newer than `cursor`, in parts (statements.py decides them).

        The Flex service has no "since" parameter: the query's own period decides which trades
        come back, so the same trades come back poll after poll. The cursor is the newest trade
        time handed over, as `yyyyMMdd;HHmmss` (US/Eastern wall clock, as IBKR writes it), and
        a poll hands over only what is newer:

        - A statement that starts (FlexStatement@fromDate) on a later day than the cursor may
          have passed trades by: they were in no statement polled. A trade-time cursor cannot
          tell "no trades since" (an account quiet for longer than the query's period) from
          "trades missed" (the poller was away that long), so this is a warning
          (`alert=flex_period_gap`, naming both days and the fix: a longer query period, e.g.
          Last 365 Calendar Days, or a re-run of the missing history), and the statement is
          still handed over: stopping would lose what it has.
        - A statement over the page budget (MAX_PAGE_BYTES) is handed over in parts, each a
          FlexQueryResponse with the statement's own attributes and some of its <Trades> rows.
          Rows linked by their ids (an execution, its cancellation or correction, its closed
          lots) stay in one part. Parts go out in the order of their newest row.
        - A part (or a statement that fits in one) whose rows are all at or before the cursor
          was handed over before and is skipped, so an unchanged statement publishes nothing. A
          cancellation or correction of an old trade has its own, newer time: its part (with
          the original) goes out again. An execution reported only later with a time at or
          before the cursor would be missed; Flex reports the executions of one second together.
        - A part's delivery id is a digest of its <Trades> rows (not of `whenGenerated`), so the
          same part generated again is the same event downstream. Each part's cursor is its
          newest row time (one second less when the next part has rows of that same second), so
          a crash between two parts re-polls the ones not yet acknowledged.
        - Trade times are read with `parse_flex_time` (flex.py), as the mapper reads them: a
          format the mapper refuses stops the poll here (UnexpectedResponse) rather than being
          dead-lettered downstream.

        The token travels in the query string (`t=`), which is why messages name request
        targets without their query and why httpx's request log lines are redacted.
        """
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

    async def fetch_accounts(self) -> list[dict[str, str]]:
        """Every account of a fresh statement, whichever the connection names: the attributes of
        each FlexStatement, with its AccountInformation's (the wizard's preview)."""
        _, root = await self._fresh_statement(any_account=True)
        found = []
        for statement in root.iter("FlexStatement"):
            account = dict(statement.attrib)
            information = statement.find("AccountInformation")
            if information is not None:
                account.update(information.attrib)
            if account.get("accountId"):
                found.append(account)
        return found

    async def _fresh_statement(self, *, any_account: bool = False) -> tuple[bytes, ET.Element]:
        step_one = await self._send_request()
        if step_one.reference_code is None or step_one.url is None:
            raise UnexpectedResponse(
                "ibkr", SEND_REQUEST_PATH, "Success without a ReferenceCode and Url"
            )
        url = statement_url(step_one.url, self._context.api_url)
        body, root = await self._flex_step(url, step_one.reference_code)
        if root.tag != "FlexQueryResponse":
            raise UnexpectedResponse("ibkr", url, f"a <{root.tag}> instead of the statement")
        for account in [] if any_account else statement_accounts(root):
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
        """One Flex step, asked again (by the broker HTTP caller's one retry loop) while IBKR
        says "busy" or "in progress"."""
        credentials = read_credentials(self._context.credentials)
        secrets = [credentials.token]

        def not_yet(response: httpx.Response) -> str | None:
            root = parse_flex_xml(response.content, url)  # `url` has no query, so no token
            if root.tag != "FlexStatementResponse":
                return None
            status = read_status(root)
            if status.status == "Success":
                return None
            self._raise_unless_worth_waiting(status, url, secrets)
            message = redact(status.error_message or "", secrets)
            return f"Flex error {status.error_code} ({message})"

        response = await self._http().get(
            url,
            params={"t": credentials.token, "q": query, "v": FLEX_VERSION},
            headers={"User-Agent": USER_AGENT},
            secrets=secrets,
            again=not_yet,
        )
        return response.content, parse_flex_xml(response.content, url)

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
                raise CredentialsRejected(401, detail, status.error_code)
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
            replace(
                self._options.statement_retry, least_wait_seconds=self._options.least_wait_seconds
            ),
            self._sleep,
            hold_offs=self._hold_offs,
        )


def create(context: AdapterContext) -> BrokerAdapter:
    return IbkrFlexAdapter(context)


def paper_account(account_id: str) -> bool:
    """IBKR's paper-trading accounts are numbered with a D (DU1234567, DF...); real ones not."""
    return account_id.upper().startswith("D")


async def discover(request: DiscoveryRequest) -> list[FoundAccount]:
    """The accounts of the query's statement: running it proves the token and the query id."""
    context = AdapterContext(
        request.probe("ibkr"), request.credentials, request.api_url, request.http
    )
    found = []
    for account in await IbkrFlexAdapter(context).fetch_accounts():
        number = account["accountId"]
        found.append(
            FoundAccount(
                account_number=number,
                connection_type="demo" if paper_account(number) else "live",
                title=account.get("acctAlias") or account.get("name") or None,
                currency=account.get("currency") or None,
                details={
                    k: account[k] for k in ("fromDate", "toDate", "accountType") if account.get(k)
                },
            )
        )
    return found
