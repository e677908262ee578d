"""IBKR Flex Web Service (v3): the connection's Flex query, run in two steps (SendRequest, then
GetStatement until the statement is ready) and handed over as the statement XML, verbatim.

The Flex service has no "since" parameter: the query's own period decides which trades come
back, so the same trades come back on the next poll. The delivery id is a digest of the
<Trades> sections only (not of `whenGenerated`), so an unchanged statement is the same event
downstream; the cursor records the newest trade time seen, as `yyyyMMdd;HHmmss` (US/Eastern,
as IBKR writes it).

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
from typing import Any, Literal
from urllib.parse import urlsplit

import defusedxml.ElementTree as SafeET
from aiolimiter import AsyncLimiter
from defusedxml import DefusedXmlException

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
    UnexpectedResponse,
)
from services.poller.adapters._http_calls import (
    BrokerHttp,
    RetryPolicy,
    Sleep,
    redact,
    redact_query_tokens_in_httpx_logs,
    shared_limiter,
)

DEFAULT_URL = "https://ndcdyn.interactivebrokers.com"
SEND_REQUEST_PATH = "/AccountManagement/FlexWebService/SendRequest"
FLEX_VERSION = "3"
USER_AGENT = "poscal-broker-sync/0.1 (Flex Web Service v3)"  # Flex refuses requests without one
CONTENT_TYPE = "application/xml"
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
_TIMESTAMP = re.compile(
    r"(?P<y>\d{4})[-/]?(?P<mo>\d{2})[-/]?(?P<d>\d{2})"
    r"(?:(?:[;,T] ?| )?(?P<h>\d{2}):?(?P<mi>\d{2})(?::?(?P<s>\d{2}))?)?"
)

# What `poscal-sync connections set-credentials` asks for: a Flex Web Service token and the id
# of the Flex query (with a Trades section) it runs.
CREDENTIAL_FIELDS = ("token", "query_id")


@dataclass(frozen=True)
class FlexOptions:
    # Flex allows about one request per second per token; each connection has its own token.
    requests_per_second: float = 1.0
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
    """A Flex date or date-time (yyyyMMdd or yyyy-MM-dd, then HHmmss or HH:mm:ss after ';', ','
    or a space) as `yyyyMMdd;HHmmss`; None for any other format."""
    match = _TIMESTAMP.fullmatch(value.strip())
    if match is None:
        return None
    year, month, day = match["y"], match["mo"], match["d"]
    hour, minute, second = match["h"] or "00", match["mi"] or "00", match["s"] or "00"
    if not (1 <= int(month) <= 12 and 1 <= int(day) <= 31 and int(hour) < 24):
        return None
    if int(minute) > 59 or int(second) > 59:
        return None
    return f"{year}{month}{day};{hour}{minute}{second}"


def row_timestamp(attributes: dict[str, str]) -> str | None:
    """When a Trades row happened: its `dateTime`, else `tradeDate` and `tradeTime`."""
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
            f"trade time {raw!r} is in a date format this adapter does not read; set the Flex "
            "query's date format to yyyyMMdd or yyyy-MM-dd",
        )
    return stamp


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


def delivery_id(account: str, digest: StatementDigest) -> str:
    return f"ibkr:{account}:{digest.trades_sha256[:32]}"


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
    ) -> None:
        self._context = context
        self._options = options or FlexOptions()
        self._sleep = sleep
        self._limiter = limiter
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
        digest = digest_statement(root)
        if digest.trade_rows == 0:
            return
        newest = max(filter(None, (previous, digest.newest_trade)), default=None)
        if newest is None:
            raise UnexpectedResponse(
                "ibkr", "GetStatement", "trade rows carry no dateTime or tradeDate to resume from"
            )
        yield Delta(
            body=body,
            content_type=CONTENT_TYPE,
            delivery_id=delivery_id(self._account, digest),
            next_cursor=newest,
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
            "ibkr", self._context.http, self._limiter, self._options.http_retry, self._sleep
        )


def create(context: AdapterContext) -> BrokerAdapter:
    return IbkrFlexAdapter(context)
