"""The whole connection wizard end to end, as the frontend drives it: through the real API, poller,
ingest, normalizer and writer processes, against the local fake OANDA, Flex and MetaApi servers,
from verifying the credentials to the account's rows in the journal; and the Expert Advisor's
path, its webhooks signed with the secret the wizard showed once."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from services.devstack.demo import encode_body, signed_headers
from services.devstack.stack import DevStack
from services.shared.connection_admin.connections import create_user
from tests.support.api import bearer, hs256
from tests.support.builders import FIXTURES, fixture_deals, mt5_body
from tests.support.dev_stacks import running_stack
from tests.support.fake_flex import FakeFlex
from tests.support.fake_metaapi import TOKEN as METAAPI_TOKEN
from tests.support.fake_metaapi import FakeMetaApi, as_metaapi_deal
from tests.support.fake_oanda import FakeOanda, numbered_transactions, sample_transactions
from tests.support.leaks import LeakSearch, Secret
from tests.support.otlp import OtlpReceiver

pytestmark = pytest.mark.e2e
OANDA_ACCOUNT = f"101-004-{uuid.uuid4().int % 10**7:07d}-001"
PAPER = "DU1234567"  # the constructed Flex round trips, as a paper account's
SERVER = "PosCal-Test"
OFFSET = 10800  # the MT5 fixtures' server clock: GMT+3
# This run's own secrets, so finding one anywhere can only mean this run leaked it.
OANDA_TOKEN = f"wizard-{uuid.uuid4().hex}-oanda-token"
FLEX_TOKEN = str(uuid.uuid4().int)[:24]


@pytest.fixture(scope="module")
def oanda() -> Iterator[FakeOanda]:
    transactions = numbered_transactions(len(sample_transactions()), account_id=OANDA_ACCOUNT)
    with FakeOanda(account_id=OANDA_ACCOUNT, token=OANDA_TOKEN, transactions=transactions) as fake:
        yield fake


@pytest.fixture(scope="module")
def flex() -> Iterator[FakeFlex]:
    statement = (FIXTURES / "constructed" / "ibkr_flex_round_trips.xml").read_bytes()
    paper = statement.replace(b'"U1234567"', f'"{PAPER}"'.encode())
    with FakeFlex(token=FLEX_TOKEN, statement=paper) as fake:
        yield fake


@pytest.fixture(scope="module")
def metaapi() -> Iterator[FakeMetaApi]:
    with FakeMetaApi() as fake:
        yield fake


@pytest.fixture(scope="module")
def stack(
    otlp: OtlpReceiver,
    oanda: FakeOanda,
    flex: FakeFlex,
    metaapi: FakeMetaApi,
    tmp_path_factory: pytest.TempPathFactory,
    database_url: str,
    kafka_bootstrap: str,
    master_key: str,
) -> Iterator[DevStack]:
    """The dev stack's processes; the API's wizard and the poller both meet the fakes."""
    with running_stack(
        Path(tmp_path_factory.mktemp("stack")),
        database_url=database_url,
        kafka_bootstrap=kafka_bootstrap,
        master_key=master_key,
        otlp_endpoint=otlp.endpoint,
        extra_env={
            "POSCAL_API_BROKER_URLS": f"oanda={oanda.url},ibkr={flex.url}",
            "POSCAL_API_WIZARD_PROVISIONING_POLL_SECONDS": "0.2",
            "POSCAL_METAAPI_TOKEN": METAAPI_TOKEN,
            "POSCAL_METAAPI_PROVISIONING_URL": metaapi.url,
            "POSCAL_METAAPI_CLIENT_URL": metaapi.url,
        },
    ) as stack:
        yield stack


@pytest.fixture
async def app(stack: DevStack) -> AsyncIterator[httpx.AsyncClient]:
    """The frontend's HTTP client of the running API."""
    async with httpx.AsyncClient(base_url=stack.api_url, timeout=30) as client:
        yield client


async def signed_in(pool: asyncpg.Pool, stack: DevStack) -> dict[str, str]:
    """A new user's headers, their token signed as Supabase signs it for the dev API."""
    async with pool.acquire() as conn:
        user_id = await create_user(conn, f"wizard-{uuid.uuid4().hex[:10]}@poscal.test")
    assert stack.api_jwt_secret is not None
    return bearer(hs256(user_id, secret=stack.api_jwt_secret))


async def eventually(check: Callable[[], Awaitable[bool]], what: str, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not await check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)


async def journal_rows(pool: asyncpg.Pool, connection_id: str) -> list[asyncpg.Record]:
    return await pool.fetch(
        "SELECT mt5_trade_id, status, volume, connection_type FROM trading_journal"
        " WHERE connection_id = $1 ORDER BY mt5_trade_id",
        uuid.UUID(connection_id),
    )


async def verified(app: httpx.AsyncClient, headers: dict[str, str], **body: Any) -> dict[str, Any]:
    """Start a session and follow it until the broker has answered."""
    started = await app.post("/v1/wizard/sessions", headers=headers, json=body)
    assert started.status_code == 201, started.text
    session: dict[str, Any] = started.json()

    async def answered() -> bool:
        nonlocal session
        session = (await app.get(f"/v1/wizard/sessions/{session['id']}", headers=headers)).json()
        return bool(session["state"] != "verifying")

    await eventually(answered, "the credentials to be verified")
    assert session["state"] == "verified", session
    return session


async def confirmed(
    app: httpx.AsyncClient, headers: dict[str, str], session: dict[str, Any]
) -> dict[str, Any]:
    (account,) = session["accounts"]
    answer = await app.post(
        f"/v1/wizard/sessions/{session['id']}/confirm",
        headers=headers,
        json={"account_number": account["account_number"], "account_label": "From the wizard"},
    )
    assert answer.status_code == 201, answer.text
    done: dict[str, Any] = answer.json()
    return done


async def followed_until_synced(
    app: httpx.AsyncClient, headers: dict[str, str], done: dict[str, Any]
) -> dict[str, Any]:
    """The connection at its status URL, once its first sync has succeeded."""
    status: dict[str, Any] = {}

    async def synced() -> bool:
        nonlocal status
        status = (await app.get(done["status_url"], headers=headers)).json()
        return bool(status["poll"] and status["poll"]["last_success_at"])

    await eventually(synced, "the first sync")
    return status


async def test_an_oanda_account_goes_from_the_wizard_to_the_journal(
    pool: asyncpg.Pool, stack: DevStack, app: httpx.AsyncClient, oanda: FakeOanda
) -> None:
    me = await signed_in(pool, stack)
    session = await verified(
        app, me, broker="oanda", connection_type="demo", credentials={"token": oanda.token}
    )
    assert session["accounts"][0]["account_number"] == OANDA_ACCOUNT
    done = await confirmed(app, me, session)
    assert done["first_sync"] == "due_now"
    status = await followed_until_synced(app, me, done)
    assert status["account_label"] == "From the wizard"

    async def in_the_journal() -> bool:
        return len(await journal_rows(pool, done["connection_id"])) == 3

    await eventually(in_the_journal, "OANDA's trades in the journal")
    rows = await journal_rows(pool, done["connection_id"])
    assert {r["connection_type"] for r in rows} == {"demo"}
    assert all(r["mt5_trade_id"].startswith(f"oanda:{OANDA_ACCOUNT}:") for r in rows)


async def test_an_ibkr_paper_account_goes_from_the_wizard_to_the_journal(
    pool: asyncpg.Pool, stack: DevStack, app: httpx.AsyncClient, flex: FakeFlex
) -> None:
    me = await signed_in(pool, stack)
    credentials = {"token": flex.token, "query_id": flex.query_id}
    session = await verified(
        app, me, broker="ibkr", connection_type="demo", credentials=credentials
    )
    assert [a["account_number"] for a in session["accounts"]] == [PAPER]
    done = await confirmed(app, me, session)
    await followed_until_synced(app, me, done)

    async def in_the_journal() -> bool:
        return len(await journal_rows(pool, done["connection_id"])) == 3

    await eventually(in_the_journal, "the Flex trades in the journal")
    rows = {r["mt5_trade_id"]: r for r in await journal_rows(pool, done["connection_id"])}
    assert rows[f"ibkr:{PAPER}:265598"]["status"] == "closed"


async def test_an_mt5_account_by_cloud_sync_goes_from_the_wizard_to_the_journal(
    pool: asyncpg.Pool, stack: DevStack, app: httpx.AsyncClient, metaapi: FakeMetaApi
) -> None:
    login = str(8000000 + uuid.uuid4().int % 100000)
    metaapi.add_login(login, "investor-e2e", server=SERVER)
    me = await signed_in(pool, stack)
    session = await verified(
        app,
        me,
        broker="mt5",
        connection_type="demo",
        sync="poll",
        credentials={"login": login, "password": "investor-e2e", "server": SERVER},
    )
    (account,) = session["accounts"]
    assert (account["account_number"], account["balance"]) == (login, "10000.00")
    (terminal,) = [a for a in metaapi.accounts if a.login.login == login]
    metaapi.add_deals(terminal.id, [as_metaapi_deal(d, OFFSET) for d in fixture_deals()])
    done = await confirmed(app, me, session)
    assert done["first_sync"] == "due_now"
    await followed_until_synced(app, me, done)

    async def in_the_journal() -> bool:
        return len(await journal_rows(pool, done["connection_id"])) == 1

    await eventually(in_the_journal, "MetaApi's deals in the journal")
    (row,) = await journal_rows(pool, done["connection_id"])
    assert row["mt5_trade_id"].startswith(f"mt5:{SERVER}:{login}:")


async def test_the_expert_advisor_posts_with_the_secret_the_wizard_showed_once(
    pool: asyncpg.Pool, stack: DevStack, app: httpx.AsyncClient
) -> None:
    login = 9000000 + uuid.uuid4().int % 100000
    me = await signed_in(pool, stack)
    session = await verified(
        app,
        me,
        broker="mt5",
        connection_type="demo",
        sync="webhook",
        credentials={"login": str(login), "server": SERVER},
    )
    done = await confirmed(app, me, session)
    assert done["first_sync"] == "after_first_webhook"
    webhook = done["webhook"]
    assert webhook["url"].startswith(f"{stack.ingest_url}/v1/webhooks/mt5/")
    body = encode_body(mt5_body(login, fixture_deals(), balance="1069.44", offset=OFFSET))
    async with httpx.AsyncClient(timeout=10) as client:
        posted = await client.post(
            webhook["url"],
            content=body,
            headers=signed_headers(webhook["secret"], f"msg_{uuid.uuid4().hex}", body),
        )
        forged = await client.post(
            webhook["url"],
            content=body,
            headers=signed_headers("whsec_" + "A" * 43 + "=", f"msg_{uuid.uuid4().hex}", body),
        )
    assert posted.status_code == 202, posted.text
    assert forged.status_code == 401

    async def in_the_journal() -> bool:
        return len(await journal_rows(pool, done["connection_id"])) == 1

    await eventually(in_the_journal, "the Expert Advisor's deals in the journal")
    status = (await app.get(done["status_url"], headers=me)).json()
    assert status["last_sync_at"] is not None and webhook["secret"] not in str(status)


async def test_no_credential_the_wizard_was_given_is_left_in_a_log_a_span_or_a_row(
    pool: asyncpg.Pool, stack: DevStack, app: httpx.AsyncClient, metaapi: FakeMetaApi
) -> None:
    """Last in this module: it stops the stack, so that every log line and span is written."""
    me = await signed_in(pool, stack)
    wrong_token = f"wrong-{uuid.uuid4().hex}-token"
    password = f"investor-{uuid.uuid4().hex}"
    login = str(8100000 + uuid.uuid4().int % 100000)
    metaapi.add_login(login, password, server=SERVER)
    refused = await app.post(
        "/v1/wizard/sessions",
        headers=me,
        json={"broker": "oanda", "connection_type": "demo", "credentials": {"token": wrong_token}},
    )
    assert refused.status_code == 400
    wrong_flex = await app.post(
        "/v1/wizard/sessions",
        headers=me,
        json={
            "broker": "ibkr",
            "connection_type": "demo",
            "credentials": {"token": "9" * 24, "query_id": "987654"},
        },
    )
    assert wrong_flex.status_code == 400
    cloud = await verified(
        app,
        me,
        broker="mt5",
        connection_type="demo",
        sync="poll",
        credentials={"login": login, "password": password, "server": SERVER},
    )
    await confirmed(app, me, cloud)
    ea = await verified(
        app,
        me,
        broker="mt5",
        connection_type="demo",
        sync="webhook",
        credentials={"login": str(int(login) + 1), "server": SERVER},
    )
    webhook = (await confirmed(app, me, ea))["webhook"]
    stack.stop()

    search = LeakSearch(
        (
            Secret.text("an OANDA token", OANDA_TOKEN),
            Secret.text("a wrong OANDA token", wrong_token),
            Secret.text("a Flex token", FLEX_TOKEN),
            Secret.text("a wrong Flex token", "9" * 24),
            Secret.text("an MT5 investor password", password),
            Secret.webhook_secret("the webhook secret shown once", webhook["secret"]),
        )
    )
    leaks = [
        *search.in_files(sorted(stack.logs.glob("*.log"))),
        *search.in_files(sorted(stack.traces.glob("*.jsonl"))),
    ]
    async with pool.acquire() as conn:
        leaks += await search.in_database(
            conn,
            {
                "public.mt5_credentials": {"ciphertext"},
                "public.user_data_keys": {"wrapped_key"},
                "public.wizard_sessions": {"sealed_credentials"},
            },
        )
    assert [str(leak) for leak in leaks] == []
    assert search.looked_at["table"] > 0 and search.looked_at["row"] > 0
