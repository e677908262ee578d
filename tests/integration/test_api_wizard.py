"""The connection wizard through the app API against the fake OANDA, Flex and MetaApi servers:
verifying signs in at the broker and keeps the credentials only sealed, and only when they work;
a refusal says what to do about it; the accounts found are previewed and one is confirmed into a
connection whose first sync is due; a real account is not connected as a demo one; live waits
for a demo sync; another user's session is answered as one that does not exist."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from typing import Any

import asyncpg
import httpx
import jwt
import pytest

from services.api.wizard_verification import Wizard
from services.shared.brokers.mt5.metaapi.settings import MetaApiConfig
from services.shared.brokers.mt5.metaapi.terminals import MetaApiTerminals
from services.shared.connection_admin.connections import create_user
from services.shared.credential_kinds import BROKER_CREDENTIALS
from services.shared.signatures import decode_secret
from services.shared.vault import CredentialVault
from tests.support.api import RunningApi, api_settings, bearer, hs256, running_api
from tests.support.fake_flex import FakeFlex, flex_statement
from tests.support.fake_metaapi import DEMO, REAL, FakeMetaApi
from tests.support.fake_metaapi import TOKEN as METAAPI_TOKEN
from tests.support.fake_oanda import FakeOanda

pytestmark = pytest.mark.integration
SERVER = "PosCal-Wizard"


@pytest.fixture(scope="module")
def oanda() -> Iterator[FakeOanda]:
    with FakeOanda(account_id="101-004-7777777-001") as fake:
        yield fake


@pytest.fixture(scope="module")
def flex() -> Iterator[FakeFlex]:
    with FakeFlex() as fake:
        yield fake


@pytest.fixture(scope="module")
def metaapi() -> Iterator[FakeMetaApi]:
    with FakeMetaApi() as fake:
        yield fake


@pytest.fixture
async def api(
    pool: asyncpg.Pool,
    database_url: str,
    master_key: str,
    oanda: FakeOanda,
    flex: FakeFlex,
    metaapi: FakeMetaApi,
) -> AsyncIterator[RunningApi]:
    oanda.reset()
    # An account is connected once, whoever connects it: each spec its own.
    oanda.account_id = f"101-004-{uuid.uuid4().int % 10**7:07d}-001"
    flex.reset(flex_statement(account_id=f"DU{uuid.uuid4().int % 10**7:07d}"))
    settings = api_settings(
        database_url,
        master_key=master_key,
        broker_urls=f"oanda={oanda.url},ibkr={flex.url}",
        ingest_url="https://ingest.poscal.test",
        wizard_provisioning_poll_seconds=0.01,
        rate_limit_per_user="10000/minute",
    )
    http = httpx.AsyncClient(timeout=5)
    config = MetaApiConfig(
        token=lambda: METAAPI_TOKEN, provisioning_url=metaapi.url, client_url=metaapi.url
    )
    terminals = MetaApiTerminals(http, config)
    wizard = Wizard(
        vault=CredentialVault(settings.key_ring()),
        http=http,
        settings=settings,
        terminals=lambda name: terminals if name == "mt5" else None,
    )
    async with running_api(settings, pool, wizard=wizard) as running:
        yield running


async def new_user(pool: asyncpg.Pool) -> dict[str, str]:
    async with pool.acquire() as conn:
        user_id = await create_user(conn, f"wizard-{uuid.uuid4().hex[:10]}@poscal.test")
    return bearer(hs256(user_id))


def user_of(headers: dict[str, str]) -> uuid.UUID:
    token = headers["Authorization"].removeprefix("Bearer ")
    return uuid.UUID(jwt.decode(token, options={"verify_signature": False})["sub"])


async def start(api: RunningApi, headers: dict[str, str], **body: Any) -> httpx.Response:
    return await api.client.post("/v1/wizard/sessions", headers=headers, json=body)


async def confirm(
    api: RunningApi, headers: dict[str, str], session: str, account: str, label: str = "Main"
) -> httpx.Response:
    return await api.client.post(
        f"/v1/wizard/sessions/{session}/confirm",
        headers=headers,
        json={"account_number": account, "account_label": label},
    )


async def sessions_of(pool: asyncpg.Pool, headers: dict[str, str]) -> list[asyncpg.Record]:
    return await pool.fetch("SELECT * FROM wizard_sessions WHERE user_id = $1", user_of(headers))


async def test_an_oanda_token_is_verified_previewed_and_confirmed_into_a_connection_due_now(
    api: RunningApi, pool: asyncpg.Pool, oanda: FakeOanda, vault: CredentialVault
) -> None:
    alice = await new_user(pool)
    started = await start(
        api, alice, broker="oanda", connection_type="demo", credentials={"token": oanda.token}
    )
    assert started.status_code == 201, started.text
    session = started.json()
    assert session["state"] == "verified" and session["sync"] == "poll"
    (account,) = session["accounts"]
    assert account["account_number"] == oanda.account_id
    assert account["matches_connection_type"] is True
    assert account["currency"] and account["balance"]
    assert oanda.token not in started.text
    (row,) = await sessions_of(pool, alice)
    assert row["sealed_credentials"] is not None
    assert oanda.token.encode() not in row["sealed_credentials"]
    # The frontend may read the table itself: the preview is JSON, not JSON in a string.
    assert (
        await pool.fetchval(
            "SELECT jsonb_typeof(accounts) FROM wizard_sessions WHERE id = $1",
            uuid.UUID(session["id"]),
        )
        == "array"
    )

    preview = await api.client.get(f"/v1/wizard/sessions/{session['id']}", headers=alice)
    assert preview.json() == session

    confirmed = await confirm(api, alice, session["id"], oanda.account_id, "OANDA practice")
    assert confirmed.status_code == 201, confirmed.text
    done = confirmed.json()
    connection_id = uuid.UUID(done["connection_id"])
    assert done["status_url"] == f"/v1/connections/{connection_id}"
    assert (done["first_sync"], done["webhook"]) == ("due_now", None)
    status = await api.client.get(done["status_url"], headers=alice)
    assert status.json()["account_label"] == "OANDA practice"
    assert status.json()["poll"] is not None
    due = await pool.fetchval(
        "SELECT next_sync_at FROM sync_schedule WHERE connection_id = $1", connection_id
    )
    assert due <= datetime.now(UTC)
    async with pool.acquire() as conn:
        stored = await vault.open_active(conn, connection_id, BROKER_CREDENTIALS, datetime.now(UTC))
    assert stored == [oanda.token.encode()]
    assert (
        await pool.fetchval("SELECT api_url FROM mt5_connections WHERE id = $1", connection_id)
        == oanda.url
    )
    (row,) = await sessions_of(pool, alice)
    assert (row["state"], row["sealed_credentials"]) == ("confirmed", None)
    again = await confirm(api, alice, session["id"], oanda.account_id)
    assert (again.status_code, again.json()["error"]) == (409, "already_confirmed")


async def test_a_wrong_token_is_refused_with_what_to_do_and_nothing_is_stored(
    api: RunningApi, pool: asyncpg.Pool
) -> None:
    alice = await new_user(pool)
    refused = await start(
        api, alice, broker="oanda", connection_type="demo", credentials={"token": "not-it"}
    )
    assert refused.status_code == 400
    assert refused.json()["error"] == "credentials_rejected"
    assert "OANDA refused these credentials" in refused.json()["detail"]
    assert "not-it" not in refused.text
    assert await sessions_of(pool, alice) == []


async def test_a_broker_rate_limit_is_passed_on_with_its_retry_after(
    pool: asyncpg.Pool, database_url: str, master_key: str
) -> None:
    # A server of its own: the hold-off its Retry-After sets lasts for its address.
    with FakeOanda() as limiting:
        limiting.fail_next(5, 429, retry_after="30")
        settings = api_settings(
            database_url, master_key=master_key, broker_urls=f"oanda={limiting.url}"
        )
        async with running_api(settings, pool) as api:
            alice = await new_user(pool)
            limited = await start(
                api,
                alice,
                broker="oanda",
                connection_type="demo",
                credentials={"token": limiting.token},
            )
    assert limited.status_code == 429
    assert limited.json()["error"] == "broker_rate_limited"
    assert limited.headers["Retry-After"] == "30"
    assert await sessions_of(pool, alice) == []


async def test_a_broker_that_does_not_answer_is_unreachable_not_a_crash(
    pool: asyncpg.Pool, database_url: str, master_key: str
) -> None:
    settings = api_settings(
        database_url, master_key=master_key, broker_urls="oanda=http://127.0.0.1:9"
    )
    async with running_api(settings, pool) as api:
        alice = await new_user(pool)
        unreachable = await start(
            api, alice, broker="oanda", connection_type="demo", credentials={"token": "abc"}
        )
    assert unreachable.status_code == 502
    assert unreachable.json()["error"] == "broker_unreachable"
    assert await sessions_of(pool, alice) == []


async def test_a_form_that_is_not_the_broker_s_is_refused_by_field(
    api: RunningApi, pool: asyncpg.Pool
) -> None:
    alice = await new_user(pool)
    for body in (
        {"broker": "oanda", "connection_type": "demo", "credentials": {"password": "x"}},
        {"broker": "ibkr", "connection_type": "demo", "credentials": {"token": "1"}},
        {
            "broker": "oanda",
            "connection_type": "demo",
            "sync": "webhook",
            "credentials": {"token": "1"},
        },
        {
            "broker": "mt5",
            "connection_type": "demo",
            "sync": "webhook",
            "credentials": {"login": "1", "server": "S", "password": "secret-pw"},
        },
        # MetaTrader 5 syncs either way: which one is the user's choice, never a default.
        {"broker": "mt5", "connection_type": "demo", "credentials": {"login": "1", "server": "S"}},
    ):
        refused = await start(api, alice, **body)
        assert refused.status_code == 422, (body, refused.text)
        assert refused.json()["fields"][0]["path"] in ("body.credentials", "body.sync")
        assert "secret-pw" not in refused.text
    unknown = await start(api, alice, broker="nobroker", connection_type="demo", credentials={})
    assert unknown.status_code == 422


async def test_an_ibkr_flex_query_previews_its_statement_s_accounts(
    api: RunningApi, pool: asyncpg.Pool, flex: FakeFlex
) -> None:
    alice = await new_user(pool)
    credentials = {"token": flex.token, "query_id": flex.query_id}
    started = await start(
        api, alice, broker="ibkr", connection_type="demo", credentials=credentials
    )
    assert started.status_code == 201, started.text
    (account,) = started.json()["accounts"]
    assert account["account_number"].startswith("DU")
    assert account["connection_type"] == "demo"
    confirmed = await confirm(api, alice, started.json()["id"], account["account_number"])
    assert confirmed.status_code == 201, confirmed.text


async def test_a_real_money_account_is_not_connected_as_a_demo_one(
    api: RunningApi, pool: asyncpg.Pool, flex: FakeFlex
) -> None:
    flex.reset(flex_statement(account_id="U9876543"))  # a real-money account
    alice = await new_user(pool)
    credentials = {"token": flex.token, "query_id": flex.query_id}
    started = await start(
        api, alice, broker="ibkr", connection_type="demo", credentials=credentials
    )
    (account,) = started.json()["accounts"]
    assert account["matches_connection_type"] is False
    refused = await confirm(api, alice, started.json()["id"], "U9876543")
    assert refused.status_code == 409
    assert refused.json()["error"] == "account_type_mismatch"
    assert "real-money account" in refused.json()["detail"]
    assert (
        await pool.fetchval(
            "SELECT count(*) FROM mt5_connections WHERE user_id = $1", user_of(alice)
        )
        == 0
    )


async def test_an_expired_flex_token_says_so(
    api: RunningApi, pool: asyncpg.Pool, flex: FakeFlex
) -> None:
    flex.expire_token()
    alice = await new_user(pool)
    credentials = {"token": flex.token, "query_id": flex.query_id}
    refused = await start(
        api, alice, broker="ibkr", connection_type="demo", credentials=credentials
    )
    assert (refused.status_code, refused.json()["error"]) == (400, "token_expired")
    assert "generate a new one" in refused.json()["detail"]
    assert flex.token not in refused.text


async def test_live_waits_for_a_synced_demo_connection_of_the_same_broker(
    api: RunningApi, pool: asyncpg.Pool, oanda: FakeOanda
) -> None:
    alice = await new_user(pool)
    body = {"broker": "oanda", "credentials": {"token": oanda.token}}
    refused = await start(api, alice, connection_type="live", **body)
    assert (refused.status_code, refused.json()["error"]) == (409, "demo_sync_required")
    assert "connect a demo OANDA account first" in refused.json()["detail"]
    assert oanda.requests.count("/v3/accounts") == 0  # refused before asking the broker

    demo = (await start(api, alice, connection_type="demo", **body)).json()
    assert "id" in demo, demo
    made = (await confirm(api, alice, demo["id"], oanda.account_id)).json()
    still = await start(api, alice, connection_type="live", **body)
    assert still.status_code == 409  # a demo connection, but not synced yet
    await pool.execute(
        "UPDATE sync_schedule SET last_success_at = now() WHERE connection_id = $1",
        uuid.UUID(made["connection_id"]),
    )
    # The fake serves its one account on either environment: now a live one of its own.
    oanda.account_id = f"001-004-{uuid.uuid4().int % 10**7:07d}-001"
    live = await start(api, alice, connection_type="live", **body)
    assert live.status_code == 201, live.text
    (account,) = live.json()["accounts"]
    assert (account["connection_type"], account["matches_connection_type"]) == ("live", True)

    # The rule holds at confirming too: a demo sync undone meanwhile (its connection deleted,
    # say) leaves the live connection unmade.
    await pool.execute(
        "UPDATE sync_schedule SET last_success_at = NULL WHERE connection_id = $1",
        uuid.UUID(made["connection_id"]),
    )
    refused = await confirm(api, alice, live.json()["id"], account["account_number"])
    assert (refused.status_code, refused.json()["error"]) == (409, "demo_sync_required")
    assert (
        await pool.fetchval(
            "SELECT count(*) FROM mt5_connections WHERE user_id = $1 AND connection_type = 'live'",
            user_of(alice),
        )
        == 0
    )
    await pool.execute(
        "UPDATE sync_schedule SET last_success_at = now() WHERE connection_id = $1",
        uuid.UUID(made["connection_id"]),
    )
    done = await confirm(api, alice, live.json()["id"], account["account_number"])
    assert done.status_code == 201, done.text
    enabled = await pool.fetchval(
        "SELECT live_enabled_at FROM mt5_connections WHERE id = $1",
        uuid.UUID(done.json()["connection_id"]),
    )
    assert enabled is not None  # polled from its first sync on


async def test_the_expert_advisor_path_shows_the_webhook_url_and_secret_once(
    api: RunningApi, pool: asyncpg.Pool, vault: CredentialVault
) -> None:
    alice = await new_user(pool)
    started = await start(
        api,
        alice,
        broker="mt5",
        connection_type="demo",
        sync="webhook",
        credentials={"login": "5550001", "server": SERVER},
    )
    assert started.status_code == 201, started.text
    session = started.json()
    assert session["state"] == "verified" and "shown once" in session["note"]
    assert [(a["account_number"], a["server"]) for a in session["accounts"]] == [
        ("5550001", SERVER)
    ]
    done = (await confirm(api, alice, session["id"], "5550001")).json()
    assert done["first_sync"] == "after_first_webhook"
    webhook = done["webhook"]
    assert webhook["url"].startswith("https://ingest.poscal.test/v1/webhooks/mt5/")
    assert "Expert Advisor" in webhook["install_hint"]
    connection_id = uuid.UUID(done["connection_id"])
    async with pool.acquire() as conn:
        keys = await vault.open_active(conn, connection_id, "webhook_secret", datetime.now(UTC))
    assert keys == [decode_secret(webhook["secret"])]
    # Shown once: neither the session nor the connection shows it again.
    for path in (f"/v1/wizard/sessions/{session['id']}", done["status_url"]):
        assert webhook["secret"] not in (await api.client.get(path, headers=alice)).text
    assert (
        await pool.fetchval(
            "SELECT count(*) FROM mt5_credentials WHERE connection_id = $1 AND kind = $2",
            connection_id,
            BROKER_CREDENTIALS,
        )
        == 0
    )


async def test_mt5_cloud_sync_provisions_a_terminal_the_client_follows_then_confirms(
    api: RunningApi, pool: asyncpg.Pool, metaapi: FakeMetaApi
) -> None:
    login = str(7000000 + uuid.uuid4().int % 100000)
    metaapi.add_login(login, "investor-pw", server=SERVER, trade_mode=DEMO)
    alice = await new_user(pool)
    sign_in = {"login": login, "password": "investor-pw", "server": SERVER}
    started = await start(
        api, alice, broker="mt5", connection_type="demo", sync="poll", credentials=sign_in
    )
    assert started.status_code == 201, started.text
    assert started.json()["state"] == "verifying"
    assert started.json()["progress"]["step"]
    (row,) = await sessions_of(pool, alice)
    assert row["sealed_credentials"] is None  # nothing kept before the broker accepted it
    assert api.wiring.wizard is not None
    await api.wiring.wizard.wait_for_runs()
    session = await api.client.get(f"/v1/wizard/sessions/{started.json()['id']}", headers=alice)
    assert session.json()["state"] == "verified", session.text
    (account,) = session.json()["accounts"]
    assert (account["account_number"], account["server"]) == (login, SERVER)
    assert account["currency"] == "USD" and account["balance"] == "10000.00"
    assert account["details"]["trade_mode"] == DEMO
    assert "investor-pw" not in session.text

    done = (await confirm(api, alice, session.json()["id"], login)).json()
    connection_id = uuid.UUID(done["connection_id"])
    assert done["first_sync"] == "due_now"
    terminal = await pool.fetchrow(
        "SELECT * FROM cloud_terminals WHERE connection_id = $1", connection_id
    )
    assert terminal is not None and terminal["ready_at"] is not None
    assert metaapi.account(terminal["remote_account_id"]) is not None
    assert await pool.fetchval(
        "SELECT next_sync_at <= now() FROM sync_schedule WHERE connection_id = $1", connection_id
    )


async def test_mt5_cloud_sync_with_a_wrong_password_fails_the_session_with_the_reason(
    api: RunningApi, pool: asyncpg.Pool, metaapi: FakeMetaApi
) -> None:
    login = str(7100000 + uuid.uuid4().int % 100000)
    metaapi.add_login(login, "investor-pw", server=SERVER)
    alice = await new_user(pool)
    sign_in = {"login": login, "password": "wrong-pw", "server": SERVER}
    started = await start(
        api, alice, broker="mt5", connection_type="demo", sync="poll", credentials=sign_in
    )
    assert api.wiring.wizard is not None
    await api.wiring.wizard.wait_for_runs()
    session = await api.client.get(f"/v1/wizard/sessions/{started.json()['id']}", headers=alice)
    assert session.json()["state"] == "failed"
    assert session.json()["error"]["code"] == "wrong_login_or_password"
    assert "wrong-pw" not in session.text
    (row,) = await sessions_of(pool, alice)
    assert row["sealed_credentials"] is None
    refused = await confirm(api, alice, started.json()["id"], login)
    assert (refused.status_code, refused.json()["error"]) == (409, "session_failed")


async def test_a_real_mt5_account_on_a_demo_cloud_connection_is_refused_and_its_terminal_removed(
    api: RunningApi, pool: asyncpg.Pool, metaapi: FakeMetaApi
) -> None:
    login = str(7200000 + uuid.uuid4().int % 100000)
    metaapi.add_login(login, "investor-pw", server=SERVER, trade_mode=REAL)
    alice = await new_user(pool)
    sign_in = {"login": login, "password": "investor-pw", "server": SERVER}
    started = await start(
        api, alice, broker="mt5", connection_type="demo", sync="poll", credentials=sign_in
    )
    assert api.wiring.wizard is not None
    await api.wiring.wizard.wait_for_runs()
    session = await api.client.get(f"/v1/wizard/sessions/{started.json()['id']}", headers=alice)
    assert session.json()["error"]["code"] == "trade_mode_mismatch"
    assert "live connection" in session.json()["error"]["message"]
    assert [a for a in metaapi.accounts if a.login.login == login] == []


async def test_another_user_s_session_is_answered_as_one_that_does_not_exist(
    api: RunningApi, pool: asyncpg.Pool
) -> None:
    alice, bob = await new_user(pool), await new_user(pool)
    body = {"login": "5550002", "server": SERVER}
    bobs = (
        await start(
            api, bob, broker="mt5", connection_type="demo", sync="webhook", credentials=body
        )
    ).json()["id"]
    nobody_s = str(uuid.uuid4())
    for path, method, payload in (
        ("/v1/wizard/sessions/{}", "GET", None),
        ("/v1/wizard/sessions/{}", "DELETE", None),
        (
            "/v1/wizard/sessions/{}/confirm",
            "POST",
            {"account_number": "5550002", "account_label": "mine now"},
        ),
    ):
        not_yours = await api.client.request(method, path.format(bobs), headers=alice, json=payload)
        missing = await api.client.request(
            method, path.format(nobody_s), headers=alice, json=payload
        )
        assert not_yours.status_code == 404
        assert (not_yours.content, dict(not_yours.headers)) == (
            missing.content,
            dict(missing.headers),
        )
    (row,) = await sessions_of(pool, bob)
    assert row["state"] == "verified"  # Alice's confirm changed nothing


async def test_without_a_vault_key_the_wizard_answers_unavailable(
    pool: asyncpg.Pool, database_url: str
) -> None:
    async with running_api(api_settings(database_url), pool) as api:
        alice = await new_user(pool)
        answer = await start(
            api, alice, broker="oanda", connection_type="demo", credentials={"token": "t"}
        )
    assert answer.status_code == 503


async def test_a_terminal_verified_for_a_session_nobody_confirmed_is_removed_once_it_expires(
    api: RunningApi, pool: asyncpg.Pool, metaapi: FakeMetaApi
) -> None:
    login = str(7300000 + uuid.uuid4().int % 100000)
    metaapi.add_login(login, "investor-pw", server=SERVER)
    alice = await new_user(pool)
    sign_in = {"login": login, "password": "investor-pw", "server": SERVER}
    started = await start(
        api, alice, broker="mt5", connection_type="demo", sync="poll", credentials=sign_in
    )
    wizard = api.wiring.wizard
    assert wizard is not None
    await wizard.wait_for_runs()
    (terminal,) = [a for a in metaapi.accounts if a.login.login == login]
    await wizard.sweep(api.wiring.db)
    assert metaapi.account(terminal.id) is not None  # not expired yet: kept for the confirm

    await pool.execute(
        "UPDATE wizard_sessions SET expires_at = now() - interval '1 second' WHERE id = $1",
        uuid.UUID(started.json()["id"]),
    )
    assert await wizard.sweep(api.wiring.db) == 1
    assert metaapi.account(terminal.id) is None
    assert await sessions_of(pool, alice) == []
    gone = await api.client.get(f"/v1/wizard/sessions/{started.json()['id']}", headers=alice)
    assert gone.status_code == 404


async def verifying_session(pool: asyncpg.Pool, headers: dict[str, str], idle: str = "0") -> str:
    """A session whose cloud terminal is being provisioned, its last step `idle` seconds ago."""
    session_id = uuid.uuid4()
    await pool.execute(
        "INSERT INTO wizard_sessions (id, user_id, broker, connection_type, sync_method, state,"
        " expires_at, updated_at) VALUES ($1, $2, 'mt5', 'demo', 'poll', 'verifying',"
        " now() + interval '1 hour', now() - make_interval(secs => $3::float8))",
        session_id,
        user_of(headers),
        float(idle),
    )
    return str(session_id)


async def test_one_user_provisions_only_a_few_cloud_terminals_at_once(
    api: RunningApi, pool: asyncpg.Pool, metaapi: FakeMetaApi
) -> None:
    alice, bob = await new_user(pool), await new_user(pool)
    for _ in range(2):  # POSCAL_API_WIZARD_PROVISIONING_PER_USER
        await verifying_session(pool, alice)
    sign_in = {"login": "7400001", "password": "pw", "server": SERVER}
    body = {"broker": "mt5", "connection_type": "demo", "sync": "poll", "credentials": sign_in}
    busy = await start(api, alice, **body)
    assert (busy.status_code, busy.json()["error"]) == (429, "provisioning_busy")
    assert busy.headers["Retry-After"] == "30"
    assert len(await sessions_of(pool, alice)) == 2
    theirs = await start(api, bob, **body)  # another user's provisioning is not held up
    assert theirs.status_code == 201
    assert api.wiring.wizard is not None
    await api.wiring.wizard.wait_for_runs()


async def test_a_verification_whose_run_stopped_is_shown_failed_so_the_client_stops_waiting(
    api: RunningApi, pool: asyncpg.Pool
) -> None:
    alice = await new_user(pool)
    timeout = api.wiring.wizard.settings.wizard_provisioning_timeout_seconds  # type: ignore[union-attr]
    stalled = await verifying_session(pool, alice, idle=str(timeout + 61))
    running = await verifying_session(pool, alice, idle="1")
    shown = (await api.client.get(f"/v1/wizard/sessions/{stalled}", headers=alice)).json()
    assert (shown["state"], shown["error"]["code"]) == ("failed", "timed_out")
    still = (await api.client.get(f"/v1/wizard/sessions/{running}", headers=alice)).json()
    assert (still["state"], still["error"]) == ("verifying", None)


async def test_backing_out_removes_the_verified_terminal_and_the_sealed_credentials(
    api: RunningApi, pool: asyncpg.Pool, metaapi: FakeMetaApi
) -> None:
    login = str(7500000 + uuid.uuid4().int % 100000)
    metaapi.add_login(login, "investor-pw", server=SERVER)
    alice = await new_user(pool)
    sign_in = {"login": login, "password": "investor-pw", "server": SERVER}
    started = await start(
        api, alice, broker="mt5", connection_type="demo", sync="poll", credentials=sign_in
    )
    assert api.wiring.wizard is not None
    await api.wiring.wizard.wait_for_runs()
    (terminal,) = [a for a in metaapi.accounts if a.login.login == login]
    session = f"/v1/wizard/sessions/{started.json()['id']}"

    cancelled = await api.client.delete(session, headers=alice)
    assert cancelled.json() == {"id": started.json()["id"], "terminal_removed": True}
    assert metaapi.account(terminal.id) is None
    (row,) = await sessions_of(pool, alice)
    assert (row["sealed_credentials"], row["terminal"]) == (None, None)
    assert (await api.client.get(session, headers=alice)).status_code == 404
    assert (await confirm(api, alice, started.json()["id"], login)).status_code == 404
