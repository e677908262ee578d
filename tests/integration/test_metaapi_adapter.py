"""The MetaApi poll adapter against the local fake MetaApi over real HTTP: deals by time range
in pages of at most 1000 (offset, limit), the overlap window that catches late deals, dedupe by
deal id, account information and positions on the last page, the trade mode and account
checked, 429 waited out by Retry-After or recommendedRetryTime, the operator's token never
taken for the user's credentials."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
import pytest

from services.shared.brokers.errors import BrokerUnavailable, CredentialsRejected
from services.shared.brokers.http import HostHoldOffs, RetryPolicy
from services.shared.brokers.mt5.metaapi.adapter import MetaApiAdapter, TradeModeMismatch
from services.shared.brokers.mt5.metaapi.client import MetaApiTokenRefused
from services.shared.brokers.mt5.metaapi.cursor import read_cursor
from services.shared.brokers.mt5.metaapi.settings import MetaApiConfig
from services.shared.brokers.polling import CloudTerminal, Delta
from services.shared.envelope import ConnectionType
from tests.support.fake_metaapi import DEMO, REAL, TOKEN, FakeMetaApi, numbered_deals
from tests.support.poll_adapters import VirtualTime, adapter_context

pytestmark = pytest.mark.integration
LOGIN, SERVER, PASSWORD = "52557820", "PosCal-Test", "investor-pw"
SIGN_IN = orjson.dumps({"login": LOGIN, "password": PASSWORD, "server": SERVER})
NOW = datetime(2024, 6, 10, 12, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def served() -> Iterator[FakeMetaApi]:
    with FakeMetaApi() as fake:
        yield fake


@pytest.fixture
def metaapi(served: FakeMetaApi) -> FakeMetaApi:
    served.add_login(LOGIN, PASSWORD, server=SERVER, trade_mode=DEMO)
    served.broker_unreachable = False
    return served


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=10.0) as client:
        yield client


def config(fake: FakeMetaApi, token: str = TOKEN, overlap: float = 3600) -> MetaApiConfig:
    return MetaApiConfig(
        token=lambda: token,
        provisioning_url=fake.url,
        client_url=fake.url,
        overlap_seconds=overlap,
    )


def adapter(
    fake: FakeMetaApi,
    http: httpx.AsyncClient,
    account_id: str,
    *,
    token: str = TOKEN,
    connection_type: ConnectionType = "demo",
    sleeps: VirtualTime | None = None,
    credentials: bytes = SIGN_IN,
) -> MetaApiAdapter:
    context = adapter_context(
        http,
        broker="mt5",
        account_number=LOGIN,
        credentials=credentials,
        api_url=None,
        connection_type=connection_type,
        server=SERVER,
        terminal=CloudTerminal("metaapi", account_id, "new-york"),
    )
    sleeps = sleeps or VirtualTime()
    return MetaApiAdapter(
        context,
        config(fake, token),
        retry=RetryPolicy(backoff_base_seconds=0.0),
        sleep=sleeps,
        hold_offs=HostHoldOffs(clock=sleeps.monotonic),
        clock=lambda: NOW,
    )


async def poll(polled: MetaApiAdapter, cursor: str | None) -> list[Delta]:
    await polled.authenticate()
    return [delta async for delta in polled.fetch_closed_trades(cursor)]


def deals_of(deltas: list[Delta]) -> list[dict[str, Any]]:
    return [deal for d in deltas for deal in orjson.loads(d.body)["deals"]]


async def test_a_first_poll_reads_the_whole_history_in_pages_of_at_most_1000_by_offset(
    metaapi: FakeMetaApi, http: httpx.AsyncClient
) -> None:
    account_id = metaapi.provisioned(LOGIN, SERVER)
    history = numbered_deals(1200, start=NOW - timedelta(days=30))  # 2401 deals
    metaapi.add_deals(account_id, history)
    metaapi.deal_pages.clear()

    deltas = await poll(adapter(metaapi, http, account_id), None)

    assert [(offset, limit) for *_, offset, limit in metaapi.deal_pages] == [
        (0, 1000),
        (1000, 1000),
        (2000, 1000),
    ]
    assert [d["id"] for d in deals_of(deltas)] == [d["id"] for d in history]
    pages = [orjson.loads(d.body) for d in deltas]
    assert all(len(page["deals"]) <= 1000 for page in pages)
    assert all(len(d.body) <= 512 * 1024 for d in deltas)
    # Only the last page carries the account and its positions.
    assert [page["accountInformation"] is not None for page in pages] == [False] * (
        len(pages) - 1
    ) + [True]
    assert pages[-1]["accountInformation"]["login"] == int(LOGIN)
    assert pages[-1]["positions"] == []
    assert {page["kind"] for page in pages} == {"metaapi.deals"}


async def test_the_cursor_moves_with_each_page_and_a_poll_from_it_hands_over_nothing_new(
    metaapi: FakeMetaApi, http: httpx.AsyncClient
) -> None:
    account_id = metaapi.provisioned(LOGIN, SERVER)
    history = numbered_deals(600, start=NOW - timedelta(days=3))
    metaapi.add_deals(account_id, history)

    deltas = await poll(adapter(metaapi, http, account_id), None)

    throughs = [read_cursor(d.next_cursor).through or NOW for d in deltas]
    assert throughs == sorted(throughs)
    assert throughs[-1] == datetime.fromisoformat(history[-1]["time"])
    assert await poll(adapter(metaapi, http, account_id), deltas[-1].next_cursor) == []


async def test_a_late_deal_inside_the_overlap_comes_next_poll_and_nothing_is_handed_over_twice(
    metaapi: FakeMetaApi, http: httpx.AsyncClient
) -> None:
    account_id = metaapi.provisioned(LOGIN, SERVER)
    history = numbered_deals(5, start=NOW - timedelta(hours=2))
    metaapi.add_deals(account_id, history)
    first = await poll(adapter(metaapi, http, account_id), None)
    newest = datetime.fromisoformat(history[-1]["time"])
    # Learned of late by the terminal: dated half an hour before the newest deal synced.
    late = numbered_deals(1, start=newest - timedelta(minutes=30))[1:]
    later = numbered_deals(1, start=newest + timedelta(minutes=5))[1:]
    metaapi.add_deals(account_id, late + later)

    second = await poll(adapter(metaapi, http, account_id), first[-1].next_cursor)

    assert sorted(d["id"] for d in deals_of(second)) == sorted(d["id"] for d in late + later)
    start_asked = metaapi.deal_pages[-1][0]
    assert datetime.fromisoformat(start_asked) == newest - timedelta(hours=1)


async def test_the_same_window_read_again_is_the_same_pages(
    metaapi: FakeMetaApi, http: httpx.AsyncClient
) -> None:
    account_id = metaapi.provisioned(LOGIN, SERVER)
    metaapi.add_deals(account_id, numbered_deals(700, start=NOW - timedelta(days=1)))
    first = await poll(adapter(metaapi, http, account_id), None)
    again = await poll(adapter(metaapi, http, account_id), None)
    assert [(d.delivery_id, d.body, d.next_cursor) for d in again] == [
        (d.delivery_id, d.body, d.next_cursor) for d in first
    ]


async def test_a_real_account_on_a_demo_connection_is_refused_and_so_is_the_reverse(
    metaapi: FakeMetaApi, http: httpx.AsyncClient
) -> None:
    account_id = metaapi.provisioned(LOGIN, SERVER)
    with pytest.raises(TradeModeMismatch, match="demo account, but the connection is a live"):
        await adapter(metaapi, http, account_id, connection_type="live").authenticate()
    metaapi.add_login(LOGIN, PASSWORD, server=SERVER, trade_mode=REAL)
    real = metaapi.provisioned(LOGIN, SERVER)
    with pytest.raises(TradeModeMismatch, match="real-money account, but the connection is a"):
        await adapter(metaapi, http, real).authenticate()
    await adapter(metaapi, http, real, connection_type="live").authenticate()


async def test_a_429_is_waited_out_by_its_retry_after_or_else_its_recommended_retry_time(
    metaapi: FakeMetaApi, http: httpx.AsyncClient
) -> None:
    account_id = metaapi.provisioned(LOGIN, SERVER)
    metaapi.add_deals(account_id, numbered_deals(2, start=NOW - timedelta(hours=1)))
    sleeps = VirtualTime()
    metaapi.fail_next(1, 429, retry_after="3", path_suffix="/account-information")
    metaapi.fail_next(1, 429, recommended_in=7, path_suffix=f"{account_id}")
    assert deals_of(await poll(adapter(metaapi, http, account_id, sleeps=sleeps), None))
    # The terminal's state is read first (the recommended time), then the account (Retry-After).
    recommended, retry_after = sleeps.delays[:2]
    assert 5.0 < recommended <= 7.0
    assert retry_after == 3.0


async def test_a_long_wait_asked_for_is_handed_to_the_poller_at_once(
    metaapi: FakeMetaApi, http: httpx.AsyncClient
) -> None:
    account_id = metaapi.provisioned(LOGIN, SERVER)
    metaapi.fail_next(1, 429, recommended_in=120, path_suffix=account_id)
    with pytest.raises(BrokerUnavailable) as waited:
        await adapter(metaapi, http, account_id).authenticate()
    assert waited.value.retry_after is not None and waited.value.retry_after > 100


async def test_one_accounts_own_rate_limit_holds_that_account_off_not_every_tenants(
    metaapi: FakeMetaApi, http: httpx.AsyncClient
) -> None:
    other_login = "52557821"
    metaapi.add_login(other_login, PASSWORD, server=SERVER, trade_mode=DEMO)
    mine, theirs = metaapi.provisioned(LOGIN, SERVER), metaapi.provisioned(other_login, SERVER)
    sleeps = VirtualTime()
    hold_offs = HostHoldOffs(clock=sleeps.monotonic)  # one process polling both tenants

    def polled(account_id: str, login: str) -> MetaApiAdapter:
        sign_in = orjson.dumps({"login": login, "password": PASSWORD, "server": SERVER})
        context = adapter_context(
            http,
            broker="mt5",
            account_number=login,
            credentials=sign_in,
            api_url=None,
            server=SERVER,
            terminal=CloudTerminal("metaapi", account_id, "new-york"),
        )
        return MetaApiAdapter(
            context,
            config(metaapi),
            retry=RetryPolicy(backoff_base_seconds=0.0),
            sleep=sleeps,
            hold_offs=hold_offs,
            clock=lambda: NOW,
        )

    # MetaApi counts credits per account too: one account's busy terminal waits alone...
    metaapi.fail_next(1, 429, recommended_in=120, exceeded="perAccount", path_suffix=mine)
    with pytest.raises(BrokerUnavailable):
        await polled(mine, LOGIN).authenticate()
    await polled(theirs, other_login).authenticate()
    with pytest.raises(BrokerUnavailable):  # ...until its own limit lets it
        await polled(mine, LOGIN).authenticate()

    # The token's limit is everyone's: every account waits.
    metaapi.fail_next(1, 429, recommended_in=600, exceeded="perUser", path_suffix=theirs)
    with pytest.raises(BrokerUnavailable):
        await polled(theirs, other_login).authenticate()
    with pytest.raises(BrokerUnavailable, match="left alone"):
        await polled(mine, LOGIN).authenticate()


async def test_a_refused_operator_token_is_the_services_problem_never_the_users_credentials(
    metaapi: FakeMetaApi, http: httpx.AsyncClient
) -> None:
    account_id = metaapi.provisioned(LOGIN, SERVER)
    with pytest.raises(MetaApiTokenRefused) as refused:
        await adapter(metaapi, http, account_id, token="not-the-token").authenticate()
    assert not isinstance(refused.value, CredentialsRejected)
    assert "not-the-token" not in str(refused.value)
    assert "POSCAL_METAAPI_TOKEN" in str(refused.value)


async def test_a_terminal_not_connected_to_its_broker_is_a_wait_not_a_failure_of_the_account(
    metaapi: FakeMetaApi, http: httpx.AsyncClient
) -> None:
    account_id = metaapi.provisioned(LOGIN, SERVER)
    found = metaapi.account(account_id)
    assert found is not None
    found.connection_status = "DISCONNECTED_FROM_BROKER"
    metaapi.broker_unreachable = True
    with pytest.raises(BrokerUnavailable, match="DISCONNECTED_FROM_BROKER"):
        await adapter(metaapi, http, account_id).authenticate()


async def test_credentials_for_another_account_are_refused_before_any_request(
    metaapi: FakeMetaApi, http: httpx.AsyncClient
) -> None:
    account_id = metaapi.provisioned(LOGIN, SERVER)
    other = orjson.dumps({"login": "1", "password": PASSWORD, "server": SERVER})
    asked = metaapi.requests.count()
    with pytest.raises(CredentialsRejected) as refused:
        await adapter(metaapi, http, account_id, credentials=other).authenticate()
    assert PASSWORD not in str(refused.value)
    assert metaapi.requests.count() == asked
