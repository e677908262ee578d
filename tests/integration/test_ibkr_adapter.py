"""The IBKR Flex adapter against a fake Flex Web Service over real HTTP: the two steps, waiting
out "generation in progress", expired tokens, statements for another account, only what is newer
than the cursor handed over, large statements in parts, a period that leaves a gap, and the
token (which Flex carries in the URL) never written anywhere."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import traceback
from collections.abc import Iterator
from datetime import UTC, datetime

import httpx
import pytest
from aiolimiter import AsyncLimiter
from structlog.testing import capture_logs

from services.devstack.ports import free_port
from services.shared.brokers import adapter_for
from services.shared.brokers.errors import (
    AccountMismatch,
    BrokerRequestFailed,
    BrokerUnavailable,
    CredentialsRejected,
    UnexpectedResponse,
)
from services.shared.brokers.http import HostHoldOffs, RetryPolicy
from services.shared.brokers.ibkr.adapter import FlexOptions, IbkrFlexAdapter
from services.shared.brokers.ibkr.mapping import map_event
from services.shared.brokers.polling import Delta
from services.shared.envelope import RawEvent
from tests.support.builders import PINNED_CONNECTION
from tests.support.fake_flex import (
    ACCOUNT,
    QUERY_ID,
    TOKEN,
    FakeFlex,
    execution,
    flex_statement,
)
from tests.support.poll_adapters import RecordedSleeps, adapter_context

pytestmark = pytest.mark.integration

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
    options: FlexOptions = OPTIONS,
) -> IbkrFlexAdapter:
    context = adapter_context(
        http,
        broker="ibkr",
        account_number=account,
        credentials=stored or credentials(),
        api_url=api_url,
        connection_type="live",
    )
    # Flex allows about one request a second; these specifications need not wait for it. The
    # limiter and the hold-offs are shared by host by default, so across specifications.
    return IbkrFlexAdapter(
        context, options, sleep=sleeps, limiter=AsyncLimiter(1000, 1), hold_offs=HostHoldOffs()
    )


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
    (again,) = await pages(make_adapter(http, flex.url, sleeps))

    assert again.delivery_id == first.delivery_id
    assert again.next_cursor == first.next_cursor


async def test_an_unchanged_statement_polled_from_its_cursor_hands_nothing_over(
    flex: FakeFlex, http: httpx.AsyncClient, sleeps: RecordedSleeps
) -> None:
    (first,) = await pages(make_adapter(http, flex.url, sleeps))
    flex.statement = flex_statement(generated="20240802;093000")

    assert await pages(make_adapter(http, flex.url, sleeps), first.next_cursor) == []


async def test_a_new_trade_is_a_new_delivery_and_advances_the_cursor(
    flex: FakeFlex, http: httpx.AsyncClient, sleeps: RecordedSleeps
) -> None:
    (first,) = await pages(make_adapter(http, flex.url, sleeps))
    flex.statement = flex_statement(extra_rows=[NEW_TRADE])
    (second,) = await pages(make_adapter(http, flex.url, sleeps), first.next_cursor)

    assert second.delivery_id != first.delivery_id
    assert second.next_cursor == "20240805;101500"


async def test_a_cursor_newer_than_every_trade_hands_nothing_over(
    flex: FakeFlex, http: httpx.AsyncClient, sleeps: RecordedSleeps
) -> None:
    assert await pages(make_adapter(http, flex.url, sleeps), "20250101;000000") == []


async def test_a_statement_starting_after_the_cursor_is_handed_over_with_a_gap_warning(
    flex: FakeFlex, http: httpx.AsyncClient, sleeps: RecordedSleeps
) -> None:
    # Either the account was quiet for longer than the query's period, or trades were passed
    # by: the cursor cannot tell, so someone is told, and what the statement has is not lost.
    flex.statement = flex_statement(from_date="20240805", extra_rows=[NEW_TRADE])

    with capture_logs() as logs:
        handed_over = [
            delta
            async for delta in make_adapter(http, flex.url, sleeps).fetch_closed_trades(
                "20240801;153045"
            )
        ]

    assert len(handed_over) == 1
    [warning] = [entry for entry in logs if entry.get("alert") == "flex_period_gap"]
    assert warning["log_level"] == "warning"
    assert "widen the Flex query's period" in warning["detail"]


async def test_a_trade_time_the_mapper_cannot_read_stops_the_poll_before_publishing(
    flex: FakeFlex, http: httpx.AsyncClient, sleeps: RecordedSleeps
) -> None:
    flex.statement = flex_statement(
        extra_rows=[NEW_TRADE.replace("20240805;101500", "2024-08-05, 10:15:00")]
    )

    with pytest.raises(UnexpectedResponse, match="'2024-08-05, 10:15:00' is not in a format"):
        await pages(make_adapter(http, flex.url, sleeps))


# A day trader's statement: 400 executions over two days, one of them cancelled at the end.
MANY = [
    execution(10_000 + n, f"2024080{2 + n // 200};{9 + n % 200 // 30:02d}{n % 30 * 2:02d}00")
    for n in range(400)
] + [execution(10_400, "20240803;170000", quantity="-10", cancels=10_003)]
BUDGET = 64 * 1024
CONNECTION = PINNED_CONNECTION.model_copy(
    update={"broker": "ibkr", "account_number": ACCOUNT, "server": None}
)


def fills_by_key(*bodies: bytes) -> dict[str, tuple[str, bool]]:
    found: dict[str, tuple[str, bool]] = {}
    for body in bodies:
        event = RawEvent.wrap(
            source="poller",
            connection=CONNECTION,
            received_at=datetime(2024, 8, 4, tzinfo=UTC),
            delivery_id="d",
            body=body,
            content_type="application/xml",
        )
        for fill in map_event(event).batch.fills:
            assert fill.fill_key not in found
            found[fill.fill_key] = (str(fill.volume), fill.cancelled)
    return found


async def test_a_large_statement_is_handed_over_in_parts_under_the_budget(
    flex: FakeFlex, http: httpx.AsyncClient, sleeps: RecordedSleeps
) -> None:
    flex.statement = flex_statement(extra_rows=MANY)
    options = dataclasses.replace(OPTIONS, page_bytes=BUDGET)
    assert len(flex.statement) > 3 * BUDGET

    found = await pages(make_adapter(http, flex.url, sleeps, options=options))

    assert len(found) >= 4
    assert all(len(delta.body) <= BUDGET for delta in found)
    assert len({delta.delivery_id for delta in found}) == len(found)
    cursors = [delta.next_cursor for delta in found]
    assert cursors == sorted(cursors) and cursors[-1] == "20240803;170000"
    # Together the parts are the statement: the same fills, the cancelled one cancelled.
    parts = fills_by_key(*(delta.body for delta in found))
    assert parts == fills_by_key(flex.statement)
    assert parts[f"ibkr:{ACCOUNT}:exec:10003"] == ("10", True)


async def test_parts_are_the_same_deliveries_when_polled_again(
    flex: FakeFlex, http: httpx.AsyncClient, sleeps: RecordedSleeps
) -> None:
    flex.statement = flex_statement(extra_rows=MANY, generated="20240804;080000")
    options = dataclasses.replace(OPTIONS, page_bytes=BUDGET)
    first = await pages(make_adapter(http, flex.url, sleeps, options=options))
    flex.statement = flex_statement(extra_rows=MANY, generated="20240804;090000")
    again = await pages(make_adapter(http, flex.url, sleeps, options=options))

    assert [d.delivery_id for d in again] == [d.delivery_id for d in first]
    assert (
        await pages(make_adapter(http, flex.url, sleeps, options=options), "20240803;170000") == []
    )


async def test_after_a_crash_between_parts_the_next_poll_hands_over_the_rest(
    flex: FakeFlex, http: httpx.AsyncClient, sleeps: RecordedSleeps
) -> None:
    flex.statement = flex_statement(extra_rows=MANY)
    options = dataclasses.replace(OPTIONS, page_bytes=BUDGET)
    every = await pages(make_adapter(http, flex.url, sleeps, options=options))

    # The poller saved the cursor of the second part, then stopped.
    rest = await pages(make_adapter(http, flex.url, sleeps, options=options), every[1].next_cursor)

    assert [d.delivery_id for d in rest] == [d.delivery_id for d in every[2:]]


async def test_only_the_parts_with_trades_newer_than_the_cursor_are_handed_over(
    flex: FakeFlex, http: httpx.AsyncClient, sleeps: RecordedSleeps
) -> None:
    flex.statement = flex_statement(extra_rows=MANY)
    options = dataclasses.replace(OPTIONS, page_bytes=BUDGET)
    every = await pages(make_adapter(http, flex.url, sleeps, options=options))
    late = execution(10_500, "20240804;093000", conid=4_815_162)
    flex.statement = flex_statement(extra_rows=[*MANY, late])

    (new,) = await pages(
        make_adapter(http, flex.url, sleeps, options=options), every[-1].next_cursor
    )

    assert new.next_cursor == "20240804;093000"
    assert b'tradeID="10500"' in new.body


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
