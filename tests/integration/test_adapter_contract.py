"""The poll adapter contract, one suite for every broker that polls: what the poller and the
connection wizard rely on, asked of each adapter exactly as they ask it (the plug-in's factory,
production options), against the broker's local fake server.

A backend here is a broker's server and what it takes to change it between polls; the real
broker's would be one more (none can be reached from this machine). Each broker's own suite
(test_<broker>_adapter.py) goes on to what only that broker does.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from services.shared.brokers import broker, broker_names
from services.shared.brokers.errors import CredentialsRejected
from services.shared.brokers.mt5.metaapi import settings as metaapi_settings
from services.shared.brokers.polling import BrokerAdapter, CloudTerminal, Delta
from services.shared.envelope import ConnectionRef, ConnectionType, RawEvent
from tests.support import fake_flex
from tests.support.fake_flex import FakeFlex, execution, flex_statement
from tests.support.fake_metaapi import TOKEN as METAAPI_TOKEN
from tests.support.fake_metaapi import FakeMetaApi, numbered_deals
from tests.support.fake_oanda import FakeOanda, numbered_transactions, sample_transactions
from tests.support.poll_adapters import adapter_context

pytestmark = pytest.mark.integration


@dataclass
class Backend:
    """A broker's server as the contract needs it."""

    broker: str
    url: str
    account_number: str
    connection_type: ConnectionType
    credentials: bytes
    wrong_credentials: bytes
    secret: str  # what must never appear in an error
    new_activity: Callable[[], object]  # a trade happens
    stumble_once: Callable[[], object]  # the next request fails as servers briefly do
    server: str | None = None  # where the account's number alone is ambiguous (MT5)
    terminal: CloudTerminal | None = None  # polled through a provisioned cloud terminal


@pytest.fixture(scope="module")
def served_oanda() -> Iterator[FakeOanda]:
    with FakeOanda() as fake:
        yield fake


@pytest.fixture(scope="module")
def served_flex() -> Iterator[FakeFlex]:
    with FakeFlex() as fake:
        yield fake


def oanda_backend(fake: FakeOanda) -> Backend:
    fake.reset(numbered_transactions(30, account_id=fake.account_id))
    return Backend(
        broker="oanda",
        url=fake.url,
        account_number=fake.account_id,
        connection_type="demo",
        credentials=fake.token.encode(),
        wrong_credentials=b"not-" + fake.token.encode(),
        secret=fake.token,
        # one of every sample transaction, fills among them
        new_activity=lambda: fake.add_transactions(len(sample_transactions())),
        stumble_once=lambda: fake.fail_next(1, 503),
    )


def flex_backend(fake: FakeFlex) -> Backend:
    trades = [execution(9_000_001, "20240805;101500")]
    fake.reset(flex_statement(extra_rows=trades))

    def new_trade() -> None:
        trades.append(execution(9_000_000 + len(trades) + 1, f"20240806;1{len(trades):05d}"))
        fake.reset(flex_statement(extra_rows=trades))

    def stored(token: str) -> bytes:
        return json.dumps({"token": token, "query_id": fake.query_id}).encode()

    return Backend(
        broker="ibkr",
        url=fake.url,
        account_number=fake_flex.ACCOUNT,
        connection_type="live",
        credentials=stored(fake.token),
        wrong_credentials=stored("314159265358979323846264"),
        secret=fake.token,
        new_activity=new_trade,
        stumble_once=lambda: fake.fail_send_request("1018"),  # "too many requests": try again
    )


@pytest.fixture(scope="module")
def served_metaapi() -> Iterator[FakeMetaApi]:
    with FakeMetaApi() as fake:
        yield fake


def metaapi_backend(fake: FakeMetaApi, monkeypatch: pytest.MonkeyPatch) -> Backend:
    """MT5 through MetaApi: the operator's token and hosts are service configuration (the
    environment), the user's sign-in the stored credentials, the terminal provisioned."""
    for name, value in (
        ("POSCAL_METAAPI_TOKEN", METAAPI_TOKEN),
        ("POSCAL_METAAPI_PROVISIONING_URL", fake.url),
        ("POSCAL_METAAPI_CLIENT_URL", fake.url),
    ):
        monkeypatch.setenv(name, value)
    metaapi_settings.configured.cache_clear()
    login, server, password = str(61_000_000 + uuid.uuid4().int % 10**6), "PosCal-Test", "inv-pw"
    fake.add_login(login, password, server=server)
    account_id = fake.provisioned(login, server)
    now = datetime.now(UTC)
    fake.add_deals(account_id, numbered_deals(30, start=now - timedelta(days=10)))
    trades = iter(range(1, 10**6))

    def new_trade() -> None:
        moment = now - timedelta(days=1) + timedelta(minutes=5 * next(trades))
        fake.add_deals(account_id, numbered_deals(1, start=moment)[1:])

    def stored(login: str) -> bytes:
        return json.dumps({"login": login, "password": password, "server": server}).encode()

    return Backend(
        broker="mt5",
        url=fake.url,
        account_number=login,
        connection_type="demo",
        credentials=stored(login),
        wrong_credentials=stored("1"),  # another account's sign-in
        secret=password,
        new_activity=new_trade,
        stumble_once=lambda: fake.fail_next(1, 503, path_suffix=account_id),
        server=server,
        terminal=CloudTerminal("metaapi", account_id, "new-york"),
    )


@pytest.fixture(params=["oanda", "ibkr", "mt5-metaapi"])
def backend(
    request: pytest.FixtureRequest,
    served_oanda: FakeOanda,
    served_flex: FakeFlex,
    served_metaapi: FakeMetaApi,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Backend]:
    match request.param:
        case "oanda":
            yield oanda_backend(served_oanda)
        case "ibkr":
            yield flex_backend(served_flex)
        case _:
            yield metaapi_backend(served_metaapi, monkeypatch)
            metaapi_settings.configured.cache_clear()  # the environment it read is undone


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=10.0) as client:
        yield client


def adapter(
    backend: Backend, http: httpx.AsyncClient, credentials: bytes | None = None
) -> BrokerAdapter:
    """The adapter as the poller gets it: the broker plug-in's own factory."""
    poll = broker(backend.broker).poll
    assert poll is not None
    return poll(
        adapter_context(
            http,
            broker=backend.broker,
            account_number=backend.account_number,
            credentials=backend.credentials if credentials is None else credentials,
            api_url=backend.url,
            connection_type=backend.connection_type,
            server=backend.server,
            terminal=backend.terminal,
        )
    )


async def poll(backend: Backend, http: httpx.AsyncClient, cursor: str | None) -> list[Delta]:
    polled = adapter(backend, http)
    await polled.authenticate()
    return [delta async for delta in polled.fetch_closed_trades(cursor)]


def mapped_fills(backend: Backend, deltas: list[Delta]) -> set[str]:
    """The fills the broker's mapper makes of these pages, none refused."""
    plugin = broker(backend.broker)
    connection = ConnectionRef(
        connection_id=uuid.uuid4(),
        user_id=uuid.uuid4(),
        account_id=uuid.uuid4(),
        broker=backend.broker,
        connection_type=backend.connection_type,
        account_number=backend.account_number,
        server=backend.server,
    )
    fills: set[str] = set()
    for delta in deltas:
        assert delta.content_type == plugin.content_type
        mapping = plugin.map(
            RawEvent.wrap(
                source="poller",
                connection=connection,
                received_at=datetime.now(UTC),
                delivery_id=delta.delivery_id,
                body=delta.body,
                content_type=delta.content_type,
            )
        )
        assert mapping.rejected == ()
        fills |= {fill.fill_key for fill in mapping.batch.fills}
    return fills


def test_every_polled_broker_is_under_the_contract() -> None:
    polled = {name for name in broker_names() if broker(name).polled}
    assert polled == {"oanda", "ibkr", "mt5"}


async def test_good_credentials_authenticate_and_the_account_is_described(
    backend: Backend, http: httpx.AsyncClient
) -> None:
    polled = adapter(backend, http)
    await polled.authenticate()
    assert await polled.fetch_account()


async def test_wrong_credentials_are_refused_without_quoting_them(
    backend: Backend, http: httpx.AsyncClient
) -> None:
    with pytest.raises(CredentialsRejected) as refused:
        await adapter(backend, http, backend.wrong_credentials).authenticate()
    assert backend.secret not in str(refused.value)
    assert backend.wrong_credentials.decode() not in str(refused.value)


async def test_a_first_poll_hands_over_the_history_as_pages_its_mapper_reads(
    backend: Backend, http: httpx.AsyncClient
) -> None:
    deltas = await poll(backend, http, None)
    assert deltas and mapped_fills(backend, deltas)
    assert len({d.delivery_id for d in deltas}) == len(deltas)


async def test_polling_from_the_last_cursor_with_nothing_new_hands_over_nothing(
    backend: Backend, http: httpx.AsyncClient
) -> None:
    deltas = await poll(backend, http, None)
    assert await poll(backend, http, deltas[-1].next_cursor) == []


async def test_the_same_window_polled_again_is_the_same_pages(
    backend: Backend, http: httpx.AsyncClient
) -> None:
    first = await poll(backend, http, None)
    again = await poll(backend, http, None)
    assert [(d.delivery_id, d.body) for d in again] == [(d.delivery_id, d.body) for d in first]


async def test_new_activity_comes_with_the_next_poll_and_only_it(
    backend: Backend, http: httpx.AsyncClient
) -> None:
    before = await poll(backend, http, None)
    backend.new_activity()
    after = await poll(backend, http, before[-1].next_cursor)
    assert after
    assert {d.delivery_id for d in after}.isdisjoint(d.delivery_id for d in before)
    assert mapped_fills(backend, after) - mapped_fills(backend, before)


async def test_a_server_that_stumbles_once_is_asked_again_within_the_poll(
    backend: Backend, http: httpx.AsyncClient
) -> None:
    backend.stumble_once()
    assert await poll(backend, http, None)
