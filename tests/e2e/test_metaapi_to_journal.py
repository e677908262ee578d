"""End to end through the real poller, Kafka, normalizer and writer processes against the local
fake MetaApi: an MT5 account synced through its cloud terminal lands with the webhook's keys, so
deals that arrived both ways make one set of journal rows, the same as the webhook path alone
makes of them; polling again changes nothing; an account of the other trade mode is refused;
`connections provision` and `connections delete` as the operator runs them."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import orjson
import pytest

from services.devstack.demo import encode_body, send_signed, wait_for_events
from services.devstack.stack import DevStack
from services.shared.brokers.mt5.metaapi.settings import MetaApiConfig
from services.shared.brokers.mt5.metaapi.terminals import MetaApiTerminals
from services.shared.connection_admin.credentials import set_broker_credentials
from services.shared.connection_admin.terminals import provision_connection
from services.shared.vault import CredentialVault
from tests.e2e.test_polling_to_journal import LONG_AGO, eventually, schedule_of, synced_after
from tests.support.builders import SERVER, TestConnection, deposit_deal, fixture_deals, mt5_body
from tests.support.builders import new_connection as new_mt5_connection
from tests.support.dev_stacks import running_stack
from tests.support.fake_metaapi import REAL, TOKEN, FakeMetaApi, as_metaapi_deal
from tests.support.otlp import OtlpReceiver

pytestmark = pytest.mark.e2e
OFFSET = 10800  # the fixture's server clock: GMT+3
PASSWORD = "investor-e2e"
BALANCE = Decimal("10000.00")  # the fake's account information


@pytest.fixture(scope="module")
def metaapi() -> Iterator[FakeMetaApi]:
    with FakeMetaApi() as fake:
        yield fake


def metaapi_env(fake: FakeMetaApi) -> dict[str, str]:
    """The operator's MetaApi configuration: service settings, never per user."""
    return {
        "POSCAL_METAAPI_TOKEN": TOKEN,
        "POSCAL_METAAPI_PROVISIONING_URL": fake.url,
        "POSCAL_METAAPI_CLIENT_URL": fake.url,
    }


@pytest.fixture(scope="module")
def stack(
    otlp: OtlpReceiver,
    metaapi: FakeMetaApi,
    tmp_path_factory: pytest.TempPathFactory,
    database_url: str,
    kafka_bootstrap: str,
    master_key: str,
) -> Iterator[DevStack]:
    """The dev stack's processes, the poller configured for the fake MetaApi."""
    with running_stack(
        Path(tmp_path_factory.mktemp("stack")),
        database_url=database_url,
        kafka_bootstrap=kafka_bootstrap,
        master_key=master_key,
        otlp_endpoint=otlp.endpoint,
        extra_env=metaapi_env(metaapi),
    ) as stack:
        yield stack


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=10.0) as client:
        yield client


async def mt5_connection(
    pool: asyncpg.Pool, vault: CredentialVault, stack: DevStack, fake: FakeMetaApi
) -> TestConnection:
    """A demo MT5 connection with its sign-in stored, the account known at the fake broker."""
    async with pool.acquire() as conn:
        made = await new_mt5_connection(conn, vault, ingest_url=stack.ingest_url)
        sign_in = {"login": str(made.login), "password": PASSWORD, "server": SERVER}
        await set_broker_credentials(
            conn, vault, made.created.connection_id, orjson.dumps(sign_in).decode()
        )
    fake.add_login(made.login, PASSWORD, server=SERVER)
    return made


async def provision(
    pool: asyncpg.Pool,
    vault: CredentialVault,
    fake: FakeMetaApi,
    http: httpx.AsyncClient,
    made: TestConnection,
) -> str:
    config = MetaApiConfig(token=lambda: TOKEN, provisioning_url=fake.url, client_url=fake.url)
    terminals = MetaApiTerminals(http, config)
    async with pool.acquire() as conn:
        done = await provision_connection(
            conn, vault, made.created.connection_id, lambda _: terminals, poll_interval_seconds=1
        )
    return done.terminal.account_id


async def send_webhook(made: TestConnection, deals: list[dict[str, Any]]) -> None:
    body = encode_body(mt5_body(made.login, deals, balance="1069.44", offset=OFFSET))
    async with httpx.AsyncClient(timeout=10) as client:
        assert (await send_signed(client, made.created, body)).status_code == 202


async def journal(pool: asyncpg.Pool, made: TestConnection) -> list[tuple[Any, ...]]:
    """The connection's journal rows, keys without the account's own prefix, so two accounts'
    rows of the same deals compare equal."""
    rows = await pool.fetch(
        "SELECT mt5_trade_id, side, volume, closed_volume, entry_price, exit_price, opened_at,"
        " closed_at, profit, commission, swap, status, fill_count FROM trading_journal"
        " WHERE connection_id = $1 ORDER BY mt5_trade_id",
        made.created.connection_id,
    )
    prefix = f"mt5:{SERVER}:{made.login}:"
    return [(r["mt5_trade_id"].removeprefix(prefix), *tuple(r)[1:]) for r in rows]


async def keys(pool: asyncpg.Pool, made: TestConnection) -> list[str]:
    rows = await pool.fetch(
        "SELECT fill_key AS k FROM broker_fills WHERE connection_id = $1 UNION ALL"
        " SELECT movement_key FROM broker_cash_movements WHERE connection_id = $1 ORDER BY 1",
        made.created.connection_id,
    )
    return [r["k"] for r in rows]


async def balance(pool: asyncpg.Pool, made: TestConnection) -> Decimal | None:
    found: Decimal | None = await pool.fetchval(
        "SELECT current_balance FROM trading_accounts WHERE id = $1", made.created.account_id
    )
    return found


async def test_deals_arriving_by_webhook_and_by_metaapi_make_one_set_of_rows_with_its_keys(
    pool: asyncpg.Pool,
    vault: CredentialVault,
    stack: DevStack,
    metaapi: FakeMetaApi,
    http: httpx.AsyncClient,
    caught_up: Any,
) -> None:
    deals = [deposit_deal(900000, "1000.00"), *fixture_deals()]
    # The webhook path alone, for the same deals: what the journal must hold.
    webhook_only = await mt5_connection(pool, vault, stack, metaapi)
    await send_webhook(webhook_only, deals)
    # The account under test: its first deals by the Expert Advisor, then all by MetaApi.
    mixed = await mt5_connection(pool, vault, stack, metaapi)
    await send_webhook(mixed, deals[:2])
    async with pool.acquire() as conn:
        assert await wait_for_events(conn, webhook_only.created.connection_id, 1) == 1
        assert await wait_for_events(conn, mixed.created.connection_id, 1) == 1
    account_id = await provision(pool, vault, metaapi, http, mixed)
    metaapi.add_deals(account_id, [as_metaapi_deal(d, OFFSET) for d in deals])
    connection_id = mixed.created.connection_id

    async def fully_synced() -> bool:
        return await journal(pool, mixed) == await journal(pool, webhook_only) and (
            await balance(pool, mixed) == BALANCE
        )

    await eventually(fully_synced, "MetaApi's deals to reach the journal")
    prefix = f"mt5:{SERVER}:{mixed.login}"
    expected_keys = sorted(f"{prefix}:deal:{d['ticket']}" for d in deals)
    assert await keys(pool, mixed) == expected_keys
    (row,) = await journal(pool, mixed)
    assert row[0] == "800001" and row[-1] == len(fixture_deals())

    # Polling the whole history again (as a lost cursor would) changes nothing.
    events = await pool.fetchval(
        "SELECT count(*) FROM sync_events WHERE connection_id = $1", connection_id
    )
    moment = await pool.fetchval("SELECT now()")
    await pool.execute(
        "UPDATE sync_schedule SET cursor = NULL, next_sync_at = now() WHERE connection_id = $1",
        connection_id,
    )
    await eventually(lambda: synced_after(pool, connection_id, moment), "another sync")
    await caught_up()
    assert await keys(pool, mixed) == expected_keys
    assert await journal(pool, mixed) == await journal(pool, webhook_only)
    assert (
        await pool.fetchval(
            "SELECT count(*) FROM sync_events WHERE connection_id = $1", connection_id
        )
        == events
    )


async def test_a_demo_connection_whose_account_turns_out_real_is_refused_and_writes_nothing(
    pool: asyncpg.Pool,
    vault: CredentialVault,
    stack: DevStack,
    metaapi: FakeMetaApi,
    http: httpx.AsyncClient,
) -> None:
    made = await mt5_connection(pool, vault, stack, metaapi)
    account_id = await provision(pool, vault, metaapi, http, made)
    metaapi.add_deals(account_id, [as_metaapi_deal(d, OFFSET) for d in fixture_deals()])
    terminal = metaapi.account(account_id)
    assert terminal is not None
    terminal.login.trade_mode = REAL  # the broker says what the account really is

    async def refused() -> bool:
        return bool((await schedule_of(pool, made.created.connection_id))["status"] == "error")

    await eventually(refused, "the connection to be refused")
    row = await schedule_of(pool, made.created.connection_id)
    assert "TradeModeMismatch" in row["connection_error"]
    assert "real-money account, but the connection is a demo connection" in row["last_error"]
    assert await keys(pool, made) == []


async def test_a_rate_limited_metaapi_is_waited_out_by_the_poller(
    pool: asyncpg.Pool,
    vault: CredentialVault,
    stack: DevStack,
    metaapi: FakeMetaApi,
    http: httpx.AsyncClient,
) -> None:
    made = await mt5_connection(pool, vault, stack, metaapi)
    account_id = await provision(pool, vault, metaapi, http, made)
    metaapi.add_deals(account_id, [as_metaapi_deal(d, OFFSET) for d in fixture_deals()])
    metaapi.fail_next(2, 429, recommended_in=1, path_suffix="/account-information")
    connection_id = made.created.connection_id
    await eventually(lambda: synced_after(pool, connection_id, LONG_AGO), "a sync past the 429s")
    row = await schedule_of(pool, connection_id)
    assert (row["consecutive_failures"], row["status"]) == (0, "idle")


def poscal_sync(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "services.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **env},
    )


async def test_the_operator_provisions_and_deletes_a_cloud_synced_connection(
    pool: asyncpg.Pool,
    vault: CredentialVault,
    stack: DevStack,
    metaapi: FakeMetaApi,
    database_url: str,
    master_key: str,
) -> None:
    env = {"DATABASE_URL": database_url, "POSCAL_MASTER_KEY": master_key, **metaapi_env(metaapi)}
    made = await mt5_connection(pool, vault, stack, metaapi)
    connection_id = str(made.created.connection_id)

    provisioned = poscal_sync("connections", "provision", connection_id, env=env)
    assert provisioned.returncode == 0, provisioned.stderr
    record = orjson.loads(provisioned.stdout)
    assert record["account"]["login"] == str(made.login)
    assert (
        "ready:" in provisioned.stderr and PASSWORD not in provisioned.stderr + provisioned.stdout
    )
    assert metaapi.account(record["terminal_id"]) is not None

    deleted = poscal_sync("connections", "delete", connection_id, env=env)
    assert deleted.returncode == 0, deleted.stderr
    assert orjson.loads(deleted.stdout)["removed_terminal"] == record["terminal_id"]
    assert metaapi.account(record["terminal_id"]) is None
    assert (
        await pool.fetchval(
            "SELECT count(*) FROM mt5_connections WHERE id = $1", made.created.connection_id
        )
        == 0
    )


async def test_a_wrong_investor_password_is_a_refusal_the_wizard_can_show(
    pool: asyncpg.Pool,
    vault: CredentialVault,
    stack: DevStack,
    metaapi: FakeMetaApi,
    database_url: str,
    master_key: str,
) -> None:
    env = {"DATABASE_URL": database_url, "POSCAL_MASTER_KEY": master_key, **metaapi_env(metaapi)}
    made = await mt5_connection(pool, vault, stack, metaapi)
    metaapi.add_login(made.login, "the-real-one", server=SERVER)

    refused = poscal_sync("connections", "provision", str(made.created.connection_id), env=env)

    assert refused.returncode == 1
    answer = orjson.loads(refused.stdout)
    assert answer["error"] == "wrong_login_or_password"
    assert "investor" in answer["detail"] and PASSWORD not in refused.stdout + refused.stderr
