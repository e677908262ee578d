"""The OANDA adapter against a fake OANDA over real HTTP: paging by id windows (halved while a
page is over the size budget), nothing new, rate limits and outages retried within bounds, a
Retry-After holding off every adapter on the host, refused tokens never retried, and the token
never written anywhere."""

from __future__ import annotations

import dataclasses
import json
import logging
import traceback
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import httpx
import pytest
from aiolimiter import AsyncLimiter
from structlog.testing import capture_logs

from services.devstack.ports import free_port
from services.shared.brokers.errors import (
    BrokerRequestFailed,
    BrokerUnavailable,
    CredentialsRejected,
)
from services.shared.brokers.http import HostHoldOffs, RetryPolicy
from services.shared.brokers.oanda.adapter import OandaAdapter, OandaOptions
from services.shared.brokers.polling import Delta
from tests.support.fake_oanda import ACCOUNT_ID, TOKEN, FakeOanda, numbered_transactions
from tests.support.poll_adapters import VirtualTime, adapter_context

pytestmark = pytest.mark.integration

RETRY = RetryPolicy(tries=5, backoff_base_seconds=0.5, backoff_cap_seconds=4.0)
OPTIONS = OandaOptions(retry=RETRY)


@pytest.fixture(scope="module")
def served_oanda() -> Iterator[FakeOanda]:
    with FakeOanda() as fake:
        yield fake


@pytest.fixture
def oanda(served_oanda: FakeOanda) -> FakeOanda:
    served_oanda.reset(numbered_transactions(2500))
    return served_oanda


@pytest.fixture
def sleeps() -> VirtualTime:
    return VirtualTime()


def make_adapter(
    http: httpx.AsyncClient,
    api_url: str,
    sleeps: VirtualTime,
    *,
    token: str = TOKEN,
    account: str = ACCOUNT_ID,
    options: OandaOptions = OPTIONS,
    hold_offs: HostHoldOffs | None = None,
) -> OandaAdapter:
    context = adapter_context(
        http,
        broker="oanda",
        account_number=account,
        credentials=f"{token}\n".encode(),
        api_url=api_url,
    )
    # The default limiter and hold-offs are shared by host, so across specifications; each
    # gets its own here, on the specification's virtual clock.
    return OandaAdapter(
        context,
        options,
        sleep=sleeps,
        limiter=AsyncLimiter(1000, 1),
        hold_offs=hold_offs or HostHoldOffs(clock=sleeps.monotonic),
    )


async def pages(adapter: OandaAdapter, cursor: str | None) -> list[Delta]:
    return [delta async for delta in adapter.fetch_closed_trades(cursor)]


def read(delta: Delta) -> dict[str, Any]:
    page: dict[str, Any] = json.loads(delta.body, parse_float=Decimal)
    return page


async def test_first_sync_reads_2500_transactions_as_three_pages_oldest_first(
    oanda: FakeOanda, http: httpx.AsyncClient, sleeps: VirtualTime
) -> None:
    found = await pages(make_adapter(http, oanda.url, sleeps), None)

    assert [d.delivery_id for d in found] == [
        f"oanda:{ACCOUNT_ID}:txn:1-1000",
        f"oanda:{ACCOUNT_ID}:txn:1001-2000",
        f"oanda:{ACCOUNT_ID}:txn:2001-2500",
    ]
    assert [d.next_cursor for d in found] == ["1000", "2000", "2500"]
    assert {d.content_type for d in found} == {"application/json"}
    assert oanda.id_ranges == [(1, 1000), (1001, 2000), (2001, 2500)]
    bodies = [read(d) for d in found]
    assert [len(b["transactions"]) for b in bodies] == [1000, 1000, 500]
    assert [t for b in bodies for t in b["transactions"]] == oanda.transactions  # verbatim
    assert {(b["kind"], b["accountID"], b["environment"]) for b in bodies} == {
        ("oanda.transactions", ACCOUNT_ID, "practice")
    }
    assert [(b["from_id"], b["to_id"], b["lastTransactionID"]) for b in bodies] == [
        ("1", "1000", "2500"),
        ("1001", "2000", "2500"),
        ("2001", "2500", "2500"),
    ]


async def test_only_the_last_page_carries_the_account_and_its_open_trades(
    oanda: FakeOanda, http: httpx.AsyncClient, sleeps: VirtualTime
) -> None:
    bodies = [read(d) for d in await pages(make_adapter(http, oanda.url, sleeps), None)]

    assert [b["account"] is None for b in bodies] == [True, True, False]
    assert [b["openTrades"] is None for b in bodies] == [True, True, False]
    last = bodies[-1]
    assert last["account"]["id"] == ACCOUNT_ID
    assert last["account"]["balance"] == "35454.4740"  # OANDA's decimal string, untouched
    assert [trade["id"] for trade in last["openTrades"]] == ["2315", "2313"]
    assert oanda.requests.count("/openTrades") == 1


async def test_nothing_new_since_the_cursor_is_no_page_and_no_transaction_request(
    oanda: FakeOanda, http: httpx.AsyncClient, sleeps: VirtualTime
) -> None:
    assert await pages(make_adapter(http, oanda.url, sleeps), "2500") == []
    assert oanda.requests.count("/summary") == 1
    assert oanda.requests.count("/transactions/idrange") == 0


async def test_transactions_made_after_a_sync_come_with_the_next_poll(
    oanda: FakeOanda, http: httpx.AsyncClient, sleeps: VirtualTime
) -> None:
    adapter = make_adapter(http, oanda.url, sleeps)
    cursor = (await pages(adapter, None))[-1].next_cursor
    added = oanda.add_transactions(3)

    (page,) = await pages(adapter, cursor)

    assert page.delivery_id == f"oanda:{ACCOUNT_ID}:txn:2501-2503"
    assert page.next_cursor == "2503"
    assert read(page)["transactions"] == added


async def test_requests_say_who_asks_and_want_rfc3339_times(
    oanda: FakeOanda, http: httpx.AsyncClient, sleeps: VirtualTime
) -> None:
    adapter = make_adapter(http, oanda.url, sleeps)
    await adapter.authenticate()
    account = await adapter.fetch_account()
    trades = await adapter.fetch_open_trades()

    assert oanda.datetime_formats == {"RFC3339"}
    assert account["id"] == ACCOUNT_ID and account["openTradeCount"] == 2
    assert [t["instrument"] for t in trades] == ["DE30_EUR", "EUR_USD"]
    assert oanda.requests.most_concurrent(ACCOUNT_ID) == 1


async def test_429_waits_exactly_as_long_as_retry_after_says(
    oanda: FakeOanda, http: httpx.AsyncClient, sleeps: VirtualTime
) -> None:
    oanda.fail_next(2, 429, retry_after="3", path_suffix="/sinceid")

    found = await pages(make_adapter(http, oanda.url, sleeps), "2400")

    assert sleeps.delays == [3.0, 3.0]
    assert [d.next_cursor for d in found] == ["2500"]
    assert oanda.requests.count("/sinceid") == 3


async def test_a_retry_after_too_long_to_wait_in_a_poll_goes_to_the_poller(
    oanda: FakeOanda, http: httpx.AsyncClient, sleeps: VirtualTime
) -> None:
    oanda.fail_next(1, 429, retry_after="600")

    with pytest.raises(BrokerUnavailable) as caught:
        await make_adapter(http, oanda.url, sleeps).authenticate()

    assert caught.value.retry_after == 600.0
    assert sleeps.delays == []


async def test_a_retry_after_over_ten_seconds_is_handed_to_the_poller_at_once(
    oanda: FakeOanda, http: httpx.AsyncClient, sleeps: VirtualTime
) -> None:
    oanda.fail_next(1, 429, retry_after="30")

    with pytest.raises(BrokerUnavailable, match="asked to wait 30s") as caught:
        await make_adapter(http, oanda.url, sleeps).authenticate()

    assert caught.value.retry_after == 30.0
    assert sleeps.delays == [] and oanda.requests.count() == 1


async def test_a_retry_after_holds_off_every_adapter_calling_that_host(
    oanda: FakeOanda, http: httpx.AsyncClient, sleeps: VirtualTime
) -> None:
    hold_offs = HostHoldOffs(clock=sleeps.monotonic)
    once = dataclasses.replace(OPTIONS, retry=dataclasses.replace(RETRY, tries=1))
    oanda.fail_next(1, 429, retry_after="5")
    with pytest.raises(BrokerUnavailable):
        await make_adapter(
            http, oanda.url, sleeps, options=once, hold_offs=hold_offs
        ).authenticate()

    # Another connection's adapter on the same host waits the rest before asking at all.
    await make_adapter(http, oanda.url, sleeps, hold_offs=hold_offs).authenticate()

    assert sleeps.delays == [5.0]
    assert oanda.requests.count("/summary") == 2


async def test_a_long_hold_off_fails_other_adapters_on_the_host_without_a_request(
    oanda: FakeOanda, http: httpx.AsyncClient, sleeps: VirtualTime
) -> None:
    hold_offs = HostHoldOffs(clock=sleeps.monotonic)
    oanda.fail_next(1, 429, retry_after="600")
    with pytest.raises(BrokerUnavailable):
        await make_adapter(http, oanda.url, sleeps, hold_offs=hold_offs).authenticate()
    sleeps.now += 100

    with pytest.raises(BrokerUnavailable, match="500s more") as caught:
        await pages(make_adapter(http, oanda.url, sleeps, hold_offs=hold_offs), None)

    assert caught.value.retry_after == 500.0
    assert oanda.requests.count() == 1 and sleeps.delays == []


async def test_server_errors_are_retried_with_growing_jittered_waits_then_succeed(
    oanda: FakeOanda, http: httpx.AsyncClient, sleeps: VirtualTime
) -> None:
    oanda.fail_next(3, 503)

    await make_adapter(http, oanda.url, sleeps).authenticate()

    assert len(sleeps.delays) == 3
    assert all(
        0 <= delay <= ceiling for delay, ceiling in zip(sleeps.delays, [0.5, 1, 2], strict=True)
    )
    assert oanda.requests.count("/summary") == 4


async def test_a_broker_that_stays_down_is_unavailable_after_a_bounded_number_of_tries(
    oanda: FakeOanda, http: httpx.AsyncClient, sleeps: VirtualTime
) -> None:
    oanda.fail_next(100, 502)

    with pytest.raises(BrokerUnavailable, match="failed 5 times; last: HTTP 502"):
        await pages(make_adapter(http, oanda.url, sleeps), None)

    assert oanda.requests.count() == RETRY.tries
    assert len(sleeps.delays) == RETRY.tries - 1


async def test_an_unreachable_broker_is_unavailable_after_the_same_bounded_tries(
    http: httpx.AsyncClient, sleeps: VirtualTime
) -> None:
    nobody = f"http://127.0.0.1:{free_port()}"

    with pytest.raises(BrokerUnavailable, match="ConnectError"):
        await make_adapter(http, nobody, sleeps).authenticate()

    assert len(sleeps.delays) == RETRY.tries - 1


async def test_a_refused_token_is_reported_at_once_and_never_retried(
    oanda: FakeOanda, http: httpx.AsyncClient, sleeps: VirtualTime
) -> None:
    adapter = make_adapter(http, oanda.url, sleeps, token="revoked-token-1234567890")

    with pytest.raises(CredentialsRejected) as caught:
        await pages(adapter, None)

    assert caught.value.status_code == 401
    assert "Insufficient authorization" in str(caught.value)
    assert oanda.requests.count() == 1 and sleeps.delays == []


async def test_an_account_the_token_may_not_read_is_refused_credentials(
    oanda: FakeOanda, http: httpx.AsyncClient, sleeps: VirtualTime
) -> None:
    with pytest.raises(CredentialsRejected) as caught:
        await make_adapter(http, oanda.url, sleeps, account="101-004-9999999-001").authenticate()
    assert caught.value.status_code == 403


async def test_another_client_error_is_a_failed_request_not_an_outage(
    oanda: FakeOanda, http: httpx.AsyncClient, sleeps: VirtualTime
) -> None:
    oanda.fail_next(1, 400, path_suffix="/idrange")

    with pytest.raises(BrokerRequestFailed) as caught:
        await pages(make_adapter(http, oanda.url, sleeps), None)

    assert caught.value.status_code == 400
    assert "/transactions/idrange" in str(caught.value)
    assert sleeps.delays == []


async def test_the_token_is_never_in_an_exception_or_a_log_line(
    oanda: FakeOanda,
    http: httpx.AsyncClient,
    sleeps: VirtualTime,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    written: list[str] = []

    async def failure(adapter: OandaAdapter) -> None:
        with pytest.raises(Exception) as caught:  # any failure: what it says is checked
            await pages(adapter, None)
        written.extend(
            [str(caught.value), repr(caught.value), *traceback.format_exception(caught.value)]
        )

    with capture_logs() as structured:
        await failure(make_adapter(http, oanda.url, sleeps, token="wrong-token-abcdef123456"))
        oanda.fail_next(100, 503)
        await failure(make_adapter(http, oanda.url, sleeps))
        oanda.stop_failing()
        oanda.fail_next(1, 404)
        await failure(make_adapter(http, oanda.url, sleeps))
        await failure(make_adapter(http, f"http://127.0.0.1:{free_port()}", sleeps))
        written.append(repr(make_adapter(http, oanda.url, sleeps)))

    written += [caplog.text, *map(repr, structured)]
    assert structured, "the retries were logged"
    assert not [text for text in written if TOKEN in text or "wrong-token-abcdef" in text]


async def test_a_delta_that_fits_one_page_is_read_since_the_cursor_and_cut_at_the_window(
    oanda: FakeOanda, http: httpx.AsyncClient, sleeps: VirtualTime
) -> None:
    [page] = await pages(make_adapter(http, oanda.url, sleeps), "2490")
    ids = [t["id"] for t in json.loads(page.body)["transactions"]]
    assert ids == [str(n) for n in range(2491, 2501)]
    assert (oanda.requests.count("/sinceid"), oanda.requests.count("/idrange")) == (1, 0)
    assert page.delivery_id.endswith(":txn:2491-2500")


async def test_a_window_whose_page_is_over_the_size_budget_is_handed_over_in_halves(
    oanda: FakeOanda, http: httpx.AsyncClient, sleeps: VirtualTime
) -> None:
    budget = 200_000  # a 1000-id page of the samples is ~360 KB, a 500-id one ~180 KB
    adapter = make_adapter(
        http, oanda.url, sleeps, options=dataclasses.replace(OPTIONS, page_bytes=budget)
    )

    found = await pages(adapter, None)

    assert [d.delivery_id.rsplit(":", 1)[1] for d in found] == [
        "1-500",
        "501-1000",
        "1001-1500",
        "1501-2000",
        "2001-2500",
    ]
    assert all(len(d.body) <= budget for d in found)
    assert [d.next_cursor for d in found] == ["500", "1000", "1500", "2000", "2500"]
    bodies = [read(d) for d in found]
    assert [t for b in bodies for t in b["transactions"]] == oanda.transactions
    assert [(b["from_id"], b["to_id"]) for b in bodies][:2] == [("1", "500"), ("501", "1000")]
    assert [b["account"] is None for b in bodies] == [True, True, True, True, False]
    assert oanda.id_ranges == [(1, 1000), (1001, 2000), (2001, 2500)]  # nothing asked twice
    assert await pages(adapter, None) == found  # the same windows again: the same pages
