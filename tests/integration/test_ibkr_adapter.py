"""The IBKR Flex adapter against a fake Flex Web Service over real HTTP: the two steps, waiting
out "generation in progress", expired tokens, statements for another account, and the token
(which Flex carries in the URL) never written anywhere."""

from __future__ import annotations

import asyncio
import json
import logging
import traceback
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from aiolimiter import AsyncLimiter
from structlog.testing import capture_logs

from services.devstack.ports import free_port
from services.poller.adapters import (
    BrokerUnavailable,
    CredentialsRejected,
    Delta,
    adapter_for,
)
from services.poller.adapters._errors import AccountMismatch, BrokerRequestFailed
from services.poller.adapters._http_calls import RetryPolicy
from services.poller.adapters.ibkr import FlexOptions, IbkrFlexAdapter
from tests.support.fake_flex import ACCOUNT, QUERY_ID, TOKEN, FakeFlex, flex_statement
from tests.support.poll_adapters import RecordedSleeps, adapter_context

OPTIONS = FlexOptions(
    statement_retry=RetryPolicy(tries=4, backoff_base_seconds=2.0, backoff_cap_seconds=8.0),
    least_wait_seconds=1.0,
)
NEW_TRADE = (
    '<Trade accountId="U123456" currency="USD" symbol="AAPL" dateTime="20240805;101500" '
    'tradeDate="20240805" quantity="10" tradePrice="210.5" buySell="BUY" '
    'levelOfDetail="EXECUTION" />'
)


@pytest.fixture(scope="module")
def served_flex() -> Iterator[FakeFlex]:
    with FakeFlex() as fake:
        yield fake


@pytest.fixture
def flex(served_flex: FakeFlex) -> FakeFlex:
    served_flex.reset()
    return served_flex


@pytest.fixture(scope="module")
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=5.0) as client:
        yield client


@pytest.fixture
def sleeps() -> RecordedSleeps:
    return RecordedSleeps()


def credentials(token: str = TOKEN, query_id: str = QUERY_ID) -> bytes:
    return json.dumps({"token": token, "query_id": query_id}).encode()


def make_adapter(
    http: httpx.AsyncClient,
    api_url: str,
    sleeps: RecordedSleeps,
    *,
    stored: bytes | None = None,
    account: str = ACCOUNT,
) -> IbkrFlexAdapter:
    context = adapter_context(
        http,
        broker="ibkr",
        account_number=account,
        credentials=stored or credentials(),
        api_url=api_url,
        connection_type="live",
    )
    # Flex allows about one request a second; these specifications need not wait for it.
    return IbkrFlexAdapter(context, OPTIONS, sleep=sleeps, limiter=AsyncLimiter(1000, 1))


async def pages(adapter: IbkrFlexAdapter, cursor: str | None = None) -> list[Delta]:
    return [delta async for delta in adapter.fetch_closed_trades(cursor)]


async def test_the_statement_is_handed_over_verbatim_with_the_newest_trade_as_cursor(
    flex: FakeFlex, http: httpx.AsyncClient, sleeps: RecordedSleeps
) -> None:
    (page,) = await pages(make_adapter(http, flex.url, sleeps))

    assert page.body == flex.statement
    assert page.content_type == "application/xml"
    broker, account, digest = page.delivery_id.split(":")
    assert (broker, account, len(digest)) == ("ibkr", ACCOUNT, 32)
    assert page.next_cursor == "20240801;153045"
    assert flex.requests.count("/SendRequest") == 1
    assert flex.requests.count("/GetStatement") == 1
    assert all(agent.startswith("poscal-broker-sync/") for agent in flex.user_agents)
    assert sleeps.delays == []


async def test_authenticating_first_does_not_ask_flex_for_a_second_statement(
    flex: FakeFlex, http: httpx.AsyncClient, sleeps: RecordedSleeps
) -> None:
    adapter = make_adapter(http, flex.url, sleeps)
    await adapter.authenticate()
    await pages(adapter)
    assert await adapter.fetch_open_trades() == []  # the sample query has no OpenPositions
    assert (await adapter.fetch_account())["accountId"] == ACCOUNT

    assert flex.requests.count("/SendRequest") == 1
    assert flex.requests.count("/GetStatement") == 1


async def test_each_fetch_without_a_fresh_authenticate_asks_for_a_new_statement(
    flex: FakeFlex, http: httpx.AsyncClient, sleeps: RecordedSleeps
) -> None:
    adapter = make_adapter(http, flex.url, sleeps)
    await adapter.authenticate()
    await pages(adapter)
    await pages(adapter)

    assert flex.requests.count("/GetStatement") == 2


async def test_generation_in_progress_twice_is_waited_out(
    flex: FakeFlex, http: httpx.AsyncClient, sleeps: RecordedSleeps
) -> None:
    flex.in_progress(2)

    (page,) = await pages(make_adapter(http, flex.url, sleeps))

    assert page.body == flex.statement
    assert flex.requests.count("/GetStatement") == 3
    assert len(sleeps.delays) == 2
    assert all(1.0 <= delay <= 4.0 for delay in sleeps.delays)  # never at once, never long


async def test_a_busy_flex_server_is_asked_again_at_either_step(
    flex: FakeFlex, http: httpx.AsyncClient, sleeps: RecordedSleeps
) -> None:
    flex.fail_send_request("1018")
    flex.fail_statement("1009")

    assert len(await pages(make_adapter(http, flex.url, sleeps))) == 1
    assert len(sleeps.delays) == 2


async def test_a_statement_that_never_gets_ready_leaves_it_to_the_next_poll(
    flex: FakeFlex, http: httpx.AsyncClient, sleeps: RecordedSleeps
) -> None:
    flex.in_progress(100)

    with pytest.raises(BrokerUnavailable, match="1019"):
        await pages(make_adapter(http, flex.url, sleeps))

    assert flex.requests.count("/GetStatement") == OPTIONS.statement_retry.tries


async def test_an_expired_token_stops_syncing_without_retrying(
    flex: FakeFlex, http: httpx.AsyncClient, sleeps: RecordedSleeps
) -> None:
    flex.expire_token()

    with pytest.raises(CredentialsRejected, match=r"1012: Token has expired\."):
        await make_adapter(http, flex.url, sleeps).authenticate()

    assert flex.requests.count() == 1 and sleeps.delays == []


async def test_a_wrong_token_is_refused_credentials(
    flex: FakeFlex, http: httpx.AsyncClient, sleeps: RecordedSleeps
) -> None:
    stored = credentials(token="314159265358979323846264")
    with pytest.raises(CredentialsRejected, match="1015"):
        await pages(make_adapter(http, flex.url, sleeps, stored=stored))


async def test_an_unknown_query_is_a_failed_request(
    flex: FakeFlex, http: httpx.AsyncClient, sleeps: RecordedSleeps
) -> None:
    with pytest.raises(BrokerRequestFailed, match="error 1014"):
        await pages(make_adapter(http, flex.url, sleeps, stored=credentials(query_id="1")))


async def test_a_statement_for_another_account_is_never_handed_over(
    flex: FakeFlex, http: httpx.AsyncClient, sleeps: RecordedSleeps
) -> None:
    flex.statement = flex_statement(account_id="U999999")

    with pytest.raises(AccountMismatch, match="'U999999', but the connection is for 'U123456'"):
        await pages(make_adapter(http, flex.url, sleeps))


async def test_an_unchanged_statement_generated_again_is_the_same_delivery(
    flex: FakeFlex, http: httpx.AsyncClient, sleeps: RecordedSleeps
) -> None:
    flex.statement = flex_statement(generated="20240802;083000")
    (first,) = await pages(make_adapter(http, flex.url, sleeps))
    flex.statement = flex_statement(generated="20240802;093000")
    (again,) = await pages(make_adapter(http, flex.url, sleeps), first.next_cursor)

    assert again.delivery_id == first.delivery_id
    assert again.next_cursor == first.next_cursor


async def test_a_new_trade_is_a_new_delivery_and_advances_the_cursor(
    flex: FakeFlex, http: httpx.AsyncClient, sleeps: RecordedSleeps
) -> None:
    (first,) = await pages(make_adapter(http, flex.url, sleeps))
    flex.statement = flex_statement(extra_rows=[NEW_TRADE])
    (second,) = await pages(make_adapter(http, flex.url, sleeps), first.next_cursor)

    assert second.delivery_id != first.delivery_id
    assert second.next_cursor == "20240805;101500"


async def test_a_cursor_newer_than_every_trade_is_kept(
    flex: FakeFlex, http: httpx.AsyncClient, sleeps: RecordedSleeps
) -> None:
    (page,) = await pages(make_adapter(http, flex.url, sleeps), "20250101;000000")
    assert page.next_cursor == "20250101;000000"


async def test_the_token_is_never_in_an_exception_or_a_log_line(
    flex: FakeFlex,
    http: httpx.AsyncClient,
    sleeps: RecordedSleeps,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    written: list[str] = []

    async def failure(adapter: IbkrFlexAdapter) -> None:
        with pytest.raises(Exception) as caught:  # any failure: what it says is checked
            await pages(adapter)
        written.extend(
            [str(caught.value), repr(caught.value), *traceback.format_exception(caught.value)]
        )

    with capture_logs() as structured:
        await pages(make_adapter(http, flex.url, sleeps))
        flex.in_progress(100)
        await failure(make_adapter(http, flex.url, sleeps))
        flex.reset()
        flex.statement = flex_statement(account_id="U999999")
        await failure(make_adapter(http, flex.url, sleeps))
        flex.expire_token()
        await failure(make_adapter(http, flex.url, sleeps))
        await failure(make_adapter(http, f"http://127.0.0.1:{free_port()}", sleeps))
        written.append(repr(make_adapter(http, flex.url, sleeps)))

    assert "t=[redacted]" in caplog.text, "httpx logged the requests, redacted"
    written += [caplog.text, *(record.getMessage() for record in caplog.records)]
    written += map(repr, structured)
    assert not [text for text in written if TOKEN in text]


async def test_the_adapter_found_by_broker_name_asks_flex_at_most_once_a_second(
    flex: FakeFlex, http: httpx.AsyncClient
) -> None:
    context = adapter_context(
        http, broker="ibkr", account_number=ACCOUNT, credentials=credentials(), api_url=flex.url
    )
    adapter = adapter_for("ibkr")(context)
    loop = asyncio.get_running_loop()
    started = loop.time()

    assert len([delta async for delta in adapter.fetch_closed_trades(None)]) == 1

    assert flex.requests.count() == 2
    assert loop.time() - started >= 0.9  # SendRequest, then GetStatement a second later
