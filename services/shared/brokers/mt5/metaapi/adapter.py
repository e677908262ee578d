"""The MetaApi poll adapter: an MT5 account's history deals by time range, read through the cloud
terminal provisioning made for the connection, each page of unseen deals a "metaapi.deals"
payload; the page that ends a poll also carries the account information and open positions."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

from aiolimiter import AsyncLimiter

from services.shared.brokers.errors import (
    AccountMismatch,
    BrokerRequestFailed,
    BrokerUnavailable,
    UnexpectedResponse,
)
from services.shared.brokers.http import HostHoldOffs, RetryPolicy, Sleep
from services.shared.brokers.mt5.metaapi.client import (
    BROKER,
    CONTENT_TYPE,
    MAX_DEALS_PER_REQUEST,
    MetaApiClient,
    dumps,
)
from services.shared.brokers.mt5.metaapi.cursor import (
    HandedDeal,
    SyncCursor,
    deal_identity,
    read_cursor,
)
from services.shared.brokers.mt5.metaapi.mapping import KIND, trade_mode_problem
from services.shared.brokers.mt5.metaapi.settings import MetaApiConfig, configured
from services.shared.brokers.mt5.metaapi.signin import read_sign_in
from services.shared.brokers.mt5.metaapi.terminals import TerminalGone, account_status
from services.shared.brokers.polling import AdapterContext, BrokerAdapter, CloudTerminal, Delta
from services.shared.errors import PermanentError

# As for every polled broker: a page's body stays under 512 KiB (see oanda/adapter.py for why).
MAX_PAGE_BYTES = 512 * 1024
# The time range asked for ends this far past our clock: a deal stamped by a server whose clock
# runs ahead of ours is still in it (the range is only an upper bound; nothing later exists).
END_MARGIN = timedelta(hours=1)


class NotProvisioned(PermanentError):
    """The connection has no ready cloud terminal to read the account through."""

    def __init__(self, connection: str) -> None:
        super().__init__(
            f"connection {connection} has no MetaApi terminal: provision it first"
            " (`poscal-sync connections provision ID`)"
        )


class TradeModeMismatch(PermanentError):
    """The account is of the other kind than the connection (a real account on a demo
    connection, or the other way round): a configuration the user must change, never synced."""

    def __init__(self, login: str, problem: str) -> None:
        super().__init__(f"MT5 account {login} {problem}: it is not synced")


class TerminalNotRunning(PermanentError):
    """The terminal was stopped, or failed to deploy: provisioning again starts it."""

    def __init__(self, state: str) -> None:
        super().__init__(
            f"MetaApi's terminal is {state}: provision the connection again"
            " (`poscal-sync connections provision ID`)"
        )


def delivery_id(account_id: str, deals: list[Any]) -> str:
    """Stable for the same deals: a page read again is the same event downstream."""
    ids = [str(deal.get("id")) if isinstance(deal, dict) else "?" for deal in deals]
    digest = hashlib.sha256("\n".join(ids).encode()).hexdigest()[:16]
    return f"metaapi:{account_id}:deals:{ids[0]}-{ids[-1]}:{len(ids)}:{digest}"


def page_body(
    *,
    login: str,
    server: str,
    account_id: str,
    deals: list[Any],
    information: dict[str, Any] | None,
    positions: list[Any] | None,
) -> bytes:
    """The page as the mapper reads it; MetaApi's objects passed through as MetaApi sent them."""
    return dumps(
        {
            "kind": KIND,
            "login": login,
            "server": server,
            "accountId": account_id,
            "deals": deals,
            "accountInformation": information,
            "positions": positions,
        }
    )


def fresh_deals(deals: list[Any], already: set[str]) -> list[Any]:
    """The deals not handed over yet, oldest first (by time, then id); adds them to `already`.
    A deal the cursor cannot place (no readable id or time) goes with them, for the mapper to
    refuse with its reason."""
    placed: list[tuple[HandedDeal, Any]] = []
    unplaced: list[Any] = []
    for deal in deals:
        identity = deal_identity(deal)
        if identity is None:
            unplaced.append(deal)
        elif identity.id not in already:
            already.add(identity.id)
            placed.append((identity, deal))
    placed.sort(key=lambda pair: (pair[0].time, pair[0].id))
    return [deal for _, deal in placed] + (unplaced if placed else [])


def fitted(
    deals: list[Any], render: Callable[[list[Any]], bytes], budget: int
) -> Iterator[list[Any]]:
    """The deals as one page if its body fits `budget` bytes, else their halves, each fitted the
    same way, in order; one deal is one page whatever its size. Depends on the deals only, so a
    re-read yields the same pages."""
    if len(deals) <= 1 or len(render(deals)) <= budget:
        yield deals
        return
    middle = len(deals) // 2
    yield from fitted(deals[:middle], render, budget)
    yield from fitted(deals[middle:], render, budget)


class MetaApiAdapter:
    def __init__(
        self,
        context: AdapterContext,
        config: MetaApiConfig | None = None,
        *,
        retry: RetryPolicy | None = None,
        sleep: Sleep = asyncio.sleep,
        limiter: AsyncLimiter | None = None,
        hold_offs: HostHoldOffs | None = None,
        clock: Callable[[], datetime] | None = None,
        page_deals: int = MAX_DEALS_PER_REQUEST,
        page_bytes: int = MAX_PAGE_BYTES,
    ) -> None:
        self._context = context
        self._config = config
        self._retry = retry
        self._sleep = sleep
        self._limiter = limiter
        self._hold_offs = hold_offs
        self._clock = clock or (lambda: datetime.now(UTC))
        self._page_deals = page_deals
        self._page_bytes = page_bytes

    def __repr__(self) -> str:
        return f"MetaApiAdapter({self._context.connection.connection_id})"

    @property
    def _terminal(self) -> CloudTerminal:
        terminal = self._context.terminal
        if terminal is None:
            raise NotProvisioned(str(self._context.connection.connection_id))
        return terminal

    def _client(self) -> tuple[MetaApiClient, str]:
        config = self._config or configured()
        client = MetaApiClient(
            config,
            self._context.http,
            retry=self._retry,
            sleep=self._sleep,
            limiter=self._limiter,
            hold_offs=self._hold_offs,
        )
        return client, config.client_base(self._terminal.region, self._context.api_url)

    async def authenticate(self) -> None:
        """The stored sign-in is the connection's, its terminal runs and is connected to the
        broker, and is logged in to that very account, of the connection's kind (demo or real)."""
        read_sign_in(self._context.credentials, self._context.connection)
        client, _ = self._client()
        try:
            document = await client.read_account(self._terminal.account_id)
        except BrokerRequestFailed as exc:
            if exc.status_code == 404:
                raise TerminalGone(self._terminal.account_id) from None
            raise
        status = account_status(document)
        match status.phase:
            case "ready":
                pass
            case "failed" | "stopped":
                raise TerminalNotRunning(status.state)
            case _:
                raise BrokerUnavailable(
                    f"MetaApi's terminal is not connected to the broker now ({status.state},"
                    f" {status.connection_status})"
                )
        await self.fetch_account()

    async def fetch_account(self) -> dict[str, Any]:
        read_sign_in(self._context.credentials, self._context.connection)
        client, base = self._client()
        information = await client.account_information(base, self._terminal.account_id)
        self._check(information)
        return information

    def _check(self, information: dict[str, Any]) -> None:
        connection = self._context.connection
        login, server = information.get("login"), information.get("server")
        if str(login) != connection.account_number or server != connection.server:
            raise AccountMismatch(
                BROKER,
                f"login {connection.account_number} on {connection.server!r}",
                f"login {login} on {server!r}",
            )
        problem = trade_mode_problem(connection.connection_type, str(information.get("type")))
        if problem is not None:
            raise TradeModeMismatch(connection.account_number, problem)

    async def fetch_closed_trades(self, cursor: str | None) -> AsyncIterator[Delta]:
        """The deals not handed over yet, from the cursor's newest deal time less the overlap
        up to now, oldest first, each MetaApi page of up to 1000 deals one or more pages of
        ours. A page is handed over once the next MetaApi page is read, so the last one (which
        carries the account information and positions) is known to be last."""
        try:
            state = read_cursor(cursor)
        except ValueError as exc:
            raise UnexpectedResponse(BROKER, "cursor", str(exc)) from None
        client, base = self._client()
        account_id = self._terminal.account_id
        overlap = timedelta(seconds=(self._config or configured()).overlap_seconds)
        start, end = state.window_start(overlap), self._clock() + END_MARGIN
        already = set(state.seen_ids())
        held: list[Any] = []
        offset = 0
        while True:
            deals = await client.deals_by_time(
                base, account_id, start, end, offset=offset, limit=self._page_deals
            )
            offset += len(deals)
            fresh = fresh_deals(deals, already)
            if fresh:  # what was held is not the last page: hand it over as it is
                deltas, state = self._deltas(held, state, overlap, None, None)
                for delta in deltas:
                    yield delta
                held = fresh
            if len(deals) < self._page_deals:
                break
        if not held:
            return  # nothing new: no page, and the cursor stays
        information = await self.fetch_account()
        positions = await client.positions(base, account_id)
        deltas, state = self._deltas(held, state, overlap, information, positions)
        for delta in deltas:
            yield delta

    def _deltas(
        self,
        deals: list[Any],
        state: SyncCursor,
        overlap: timedelta,
        information: dict[str, Any] | None,
        positions: list[Any] | None,
    ) -> tuple[list[Delta], SyncCursor]:
        """`deals` as pages that fit, the account information and positions on the last, and
        the cursor once they are all handed over."""
        connection = self._context.connection
        account_id = self._terminal.account_id

        def render(chunk: list[Any], final: bool = False) -> bytes:
            return page_body(
                login=connection.account_number,
                server=connection.server or "",
                account_id=account_id,
                deals=chunk,
                information=information if final else None,
                positions=positions if final else None,
            )

        if not deals:
            return [], state
        chunks = list(fitted(deals, lambda chunk: render(chunk, True), self._page_bytes))
        deltas = []
        for number, chunk in enumerate(chunks, start=1):
            handed = [found for found in map(deal_identity, chunk) if found is not None]
            state = state.after(handed, overlap)
            deltas.append(
                Delta(
                    body=render(chunk, number == len(chunks)),
                    content_type=CONTENT_TYPE,
                    delivery_id=delivery_id(account_id, chunk),
                    next_cursor=state.text(),
                )
            )
        return deltas, state


def create(context: AdapterContext) -> BrokerAdapter:
    return MetaApiAdapter(context)
