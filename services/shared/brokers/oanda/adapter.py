"""OANDA v20 REST: an account's transactions after a cursor, in windows of at most 1000 ids,
each handed over as one or more JSON pages that the oanda mapper reads."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from functools import partial
from typing import Any, Literal

import orjson
from aiolimiter import AsyncLimiter

from services.shared.brokers.discovery import DiscoveryRequest, FoundAccount
from services.shared.brokers.errors import CredentialsUnreadable, UnexpectedResponse
from services.shared.brokers.http import (
    BrokerHttp,
    HostHoldOffs,
    RetryPolicy,
    Sleep,
    read_json_object,
    shared_limiter,
)
from services.shared.brokers.polling import AdapterContext, BrokerAdapter, Delta
from services.shared.envelope import ConnectionType
from services.shared.logging import get_logger

PRACTICE_URL = "https://api-fxpractice.oanda.com"
LIVE_URL = "https://api-fxtrade.oanda.com"
MAX_PAGE_IDS = 1000  # OANDA's limit for one /transactions/idrange request
# A page's body at most: 1000 real transactions can reach ~765 KB, and the raw event carries the
# body in base64 (4/3), so a full window would pass Kafka's default 1 MiB message limit. At
# 512 KiB the raw event stays under 700 KB, and a dead letter of it (base64 again) under 1 MiB.
MAX_PAGE_BYTES = 512 * 1024
CONTENT_TYPE = "application/json"

Environment = Literal["practice", "live"]
_TOKEN = re.compile(r"[\x21-\x7e]+")  # printable ASCII: anything else could split the header
_TRANSACTION_ID = re.compile(r"[0-9]{1,18}")
_log = get_logger(__name__)

# A page's body for a window and its transactions; the flag says it ends the poll's last window.
RenderPage = Callable[["IdWindow", list[Any], bool], bytes]


@dataclass(frozen=True)
class OandaOptions:
    # OANDA allows about 100-120 requests/s per client address; the limiter is shared by every
    # adapter polling the same host from this process, so this is the whole process's budget.
    requests_per_second: float = 20.0
    page_ids: int = MAX_PAGE_IDS
    page_bytes: int = MAX_PAGE_BYTES
    retry: RetryPolicy = field(default_factory=RetryPolicy)


@dataclass(frozen=True)
class IdWindow:
    """Transaction ids `first`..`last`, both included."""

    first: int
    last: int


def id_windows(cursor: int, last_id: int, size: int = MAX_PAGE_IDS) -> list[IdWindow]:
    """The windows after `cursor` up to `last_id`, oldest first, each at most `size` ids."""
    if not 1 <= size <= MAX_PAGE_IDS:
        raise ValueError(f"an OANDA page holds 1 to {MAX_PAGE_IDS} ids, not {size}")
    return [
        IdWindow(first, min(first + size - 1, last_id))
        for first in range(cursor + 1, last_id + 1, size)
    ]


def fitted_pages(
    window: IdWindow, transactions: list[Any], render: RenderPage, budget: int, *, last: bool
) -> Iterator[tuple[IdWindow, bytes]]:
    """The window as one page if its body fits `budget` bytes, else its halves by id, each
    fitted the same way, oldest first. Only the page that ends the window is rendered `last`
    (when the window is the poll's last). A single id is one page whatever its size. The halves
    depend only on the window's transactions, so a re-poll of the same window yields the same
    pages."""
    body = render(window, transactions, last)
    if len(body) <= budget or window.first == window.last:
        yield window, body
        return
    middle = (window.first + window.last) // 2
    older = [t for t in transactions if (_id_of(t) or window.first) <= middle]
    newer = [t for t in transactions if (_id_of(t) or window.first) > middle]
    yield from fitted_pages(IdWindow(window.first, middle), older, render, budget, last=False)
    yield from fitted_pages(IdWindow(middle + 1, window.last), newer, render, budget, last=last)


def read_cursor(cursor: str | None) -> int:
    """The last transaction id already published; 0 when the account was never synced."""
    if cursor is None:
        return 0
    if not _TRANSACTION_ID.fullmatch(cursor):
        raise ValueError(f"an OANDA cursor is a transaction id, not {cursor!r}")
    return int(cursor)


def read_token(credentials: bytes) -> str:
    try:
        token = credentials.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise CredentialsUnreadable("oanda", "a UTF-8 API token") from None
    if not _TOKEN.fullmatch(token):
        raise CredentialsUnreadable("oanda", "an API token (printable, without spaces)")
    return token


def environment_of(connection_type: ConnectionType) -> Environment:
    return "practice" if connection_type == "demo" else "live"


def base_url(connection_type: ConnectionType, api_url: str | None) -> str:
    if api_url:
        return api_url.rstrip("/")
    return PRACTICE_URL if connection_type == "demo" else LIVE_URL


def delivery_id(account_id: str, window: IdWindow) -> str:
    return f"oanda:{account_id}:txn:{window.first}-{window.last}"


def _exact_number(value: object) -> orjson.Fragment:
    # Numbers that were JSON numbers go back out as the same digits, never through float.
    if isinstance(value, Decimal):
        return orjson.Fragment(str(value))
    raise TypeError(f"{type(value).__name__} is not JSON")


def page_body(
    *,
    account_id: str,
    environment: Environment,
    window: IdWindow,
    last_transaction_id: str,
    transactions: list[Any],
    account: dict[str, Any] | None,
    open_trades: list[Any] | None,
) -> bytes:
    """The page as the oanda mapper reads it; OANDA's own objects are passed through as given."""
    return orjson.dumps(
        {
            "kind": "oanda.transactions",
            "accountID": account_id,
            "environment": environment,
            "from_id": str(window.first),
            "to_id": str(window.last),
            "lastTransactionID": last_transaction_id,
            "transactions": transactions,
            "account": account,
            "openTrades": open_trades,
        },
        default=_exact_number,
    )


class OandaAdapter:
    def __init__(
        self,
        context: AdapterContext,
        options: OandaOptions | None = None,
        *,
        sleep: Sleep = asyncio.sleep,
        limiter: AsyncLimiter | None = None,
        hold_offs: HostHoldOffs | None = None,
    ) -> None:
        self._context = context
        self._options = options or OandaOptions()
        self._sleep = sleep
        self._limiter = limiter
        self._hold_offs = hold_offs
        self._base = base_url(context.connection.connection_type, context.api_url)
        self._account_id = context.connection.account_number
        self._environment = environment_of(context.connection.connection_type)

    def __repr__(self) -> str:
        return f"OandaAdapter({self._account_id}, {self._base})"

    async def authenticate(self) -> None:
        await self._summary()

    async def fetch_account(self) -> dict[str, Any]:
        return self._account_of(await self._summary())

    async def list_accounts(self) -> list[str]:
        """The ids of every account the token may use (v20 `GET /v3/accounts`)."""
        document = await self._get_object("/v3/accounts")
        accounts = document.get("accounts")
        if not isinstance(accounts, list):
            raise UnexpectedResponse("oanda", f"{self._base}/v3/accounts", "no `accounts` list")
        found = [a.get("id") for a in accounts if isinstance(a, dict)]
        return [i for i in found if isinstance(i, str) and i]

    async def fetch_open_trades(self) -> list[dict[str, Any]]:
        document = await self._get_object(f"{self._account_path}/openTrades")
        trades = document.get("trades")
        if not isinstance(trades, list):
            raise self._unexpected("openTrades", "no `trades` list")
        return trades

    async def fetch_closed_trades(self, cursor: str | None) -> AsyncIterator[Delta]:
        """The pages after `cursor`, oldest first.

        The windows are fixed by the summary's lastTransactionID read at the start of the poll,
        so a page's content and its delivery id depend only on its window, even while the trader
        keeps trading during the poll. A delta that fits one window (the usual poll) is read with
        `/transactions/sinceid` and cut at the window's end; a longer one (a first sync, a long
        outage) is paged with `/transactions/idrange`."""
        after = read_cursor(cursor)
        summary = await self._summary()
        last_id = self._last_transaction_id(summary)
        if last_id < after:
            raise self._unexpected(
                "summary", f"lastTransactionID {last_id} is before the cursor {after}"
            )
        windows = id_windows(after, last_id, self._options.page_ids)
        for window in windows:
            if len(windows) == 1 and after > 0:
                transactions = await self._transactions_since(after, window)
            else:
                transactions = await self._transactions(window)
            final = window is windows[-1]
            render = partial(
                self._page,
                last_id=last_id,
                account=self._account_of(summary) if final else None,
                open_trades=await self.fetch_open_trades() if final else None,
            )
            pages = fitted_pages(window, transactions, render, self._options.page_bytes, last=final)
            for piece, body in pages:
                if len(body) > self._options.page_bytes:  # one transaction, or the open trades
                    _log.warning("oanda_page_over_budget", window=f"{piece.first}-{piece.last}")
                yield Delta(
                    body=body,
                    content_type=CONTENT_TYPE,
                    delivery_id=delivery_id(self._account_id, piece),
                    next_cursor=str(piece.last),
                )

    def _page(
        self,
        window: IdWindow,
        transactions: list[Any],
        last: bool,
        *,
        last_id: int,
        account: dict[str, Any] | None,
        open_trades: list[Any] | None,
    ) -> bytes:
        """A page of the poll; the account and open trades go on its last page only."""
        return page_body(
            account_id=self._account_id,
            environment=self._environment,
            window=window,
            last_transaction_id=str(last_id),
            transactions=transactions,
            account=account if last else None,
            open_trades=open_trades if last else None,
        )

    @property
    def _account_path(self) -> str:
        return f"/v3/accounts/{self._account_id}"

    async def _summary(self) -> dict[str, Any]:
        return await self._get_object(f"{self._account_path}/summary")

    async def _transactions(self, window: IdWindow) -> list[Any]:
        document = await self._get_object(
            f"{self._account_path}/transactions/idrange",
            {"from": str(window.first), "to": str(window.last)},
        )
        transactions = document.get("transactions")
        if not isinstance(transactions, list):
            raise self._unexpected("transactions/idrange", "no `transactions` list")
        return transactions

    async def _transactions_since(self, after: int, window: IdWindow) -> list[Any]:
        document = await self._get_object(
            f"{self._account_path}/transactions/sinceid", {"id": str(after)}
        )
        transactions = document.get("transactions")
        if not isinstance(transactions, list):
            raise self._unexpected("transactions/sinceid", "no `transactions` list")
        # Whatever happened after the summary was read belongs to the next poll's window.
        return [t for t in transactions if (_id_of(t) or 0) <= window.last]

    def _account_of(self, summary: dict[str, Any]) -> dict[str, Any]:
        account = summary.get("account")
        if not isinstance(account, dict):
            raise self._unexpected("summary", "no `account` object")
        return account

    def _last_transaction_id(self, summary: dict[str, Any]) -> int:
        value = summary.get("lastTransactionID", self._account_of(summary).get("lastTransactionID"))
        if not isinstance(value, str) or not _TRANSACTION_ID.fullmatch(value):
            raise self._unexpected("summary", f"lastTransactionID {value!r} is not an id")
        return int(value)

    async def _get_object(self, path: str, params: dict[str, str] | None = None) -> dict[str, Any]:
        token = read_token(self._context.credentials)
        response = await self._http().get(
            f"{self._base}{path}",
            params=params,
            headers={
                "Authorization": f"Bearer {token}",
                "Accept": CONTENT_TYPE,
                "Accept-Datetime-Format": "RFC3339",
            },
            secrets=[token],
        )
        return read_json_object(response, "oanda")

    def _http(self) -> BrokerHttp:
        if self._limiter is None:
            self._limiter = shared_limiter(self._base, self._options.requests_per_second)
        return BrokerHttp(
            "oanda",
            self._context.http,
            self._limiter,
            self._options.retry,
            self._sleep,
            hold_offs=self._hold_offs,
        )

    def _unexpected(self, what: str, detail: str) -> UnexpectedResponse:
        return UnexpectedResponse("oanda", f"{self._base}{self._account_path}/{what}", detail)


def _id_of(transaction: object) -> int | None:
    raw = transaction.get("id") if isinstance(transaction, dict) else None
    return int(raw) if isinstance(raw, str) and raw.isascii() and raw.isdigit() else None


def create(context: AdapterContext) -> BrokerAdapter:
    return OandaAdapter(context)


# A wizard's sign-in is one quick try: a rate limit is told to the person, not slept on.
VERIFY_RETRY = RetryPolicy(tries=2, backoff_base_seconds=0.2, longest_wait_seconds=0.0)
MAX_PREVIEWED_ACCOUNTS = 20


async def discover(request: DiscoveryRequest) -> list[FoundAccount]:
    """The token's accounts with their summaries. A token works on one environment only
    (practice for demo, trade for live), so every account found is of the kind asked for; a
    token of the other environment is refused (401) there."""
    options = OandaOptions(retry=VERIFY_RETRY)

    def adapter(account: str = "") -> OandaAdapter:
        context = AdapterContext(
            request.probe("oanda", account), request.credentials, request.api_url, request.http
        )
        return OandaAdapter(context, options)

    found = []
    for account_id in (await adapter().list_accounts())[:MAX_PREVIEWED_ACCOUNTS]:
        summary = await adapter(account_id).fetch_account()
        alias, currency, balance = (summary.get(k) for k in ("alias", "currency", "balance"))
        found.append(
            FoundAccount(
                account_number=account_id,
                connection_type=request.connection_type,
                title=alias if isinstance(alias, str) and alias else None,
                currency=currency if isinstance(currency, str) else None,
                balance=None if balance is None else str(balance),
            )
        )
    return found
