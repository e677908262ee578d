"""`poscal-sync reconcile` against the fake OANDA server, the real broker and database: deals the
broker has and the journal lacks are reported, fetched and written; an MT5 webhook account whose
reported balance disagrees with its recorded deals is reported as drift, one that agrees within
rounding reports none; the poller's scheduled runs are leased to one replica at a time."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from typing import Any

import asyncpg
import httpx
import orjson
import pytest
from prometheus_client import REGISTRY

from services.devstack.demo import encode_body
from services.poller.reconciling import reconcile_due
from services.shared.connection_admin.credentials import set_broker_credentials
from services.shared.envelope import RawEvent
from services.shared.reconciling import Reconciler
from services.shared.settings import Topics
from services.shared.vault import CredentialVault
from tests.support.builders import (
    TestConnection,
    connect_broker_account,
    deposit_deal,
    fixture_deals,
    mt5_body,
    new_connection,
    raw_event,
)
from tests.support.cli_runs import poscal_sync
from tests.support.fake_oanda import FakeOanda, numbered_transactions
from tests.support.pipeline import running_pipeline

pytestmark = pytest.mark.integration


@pytest.fixture
def oanda() -> Iterator[FakeOanda]:
    account = f"101-004-{uuid.uuid4().int % 10**7:07d}-001"
    with FakeOanda(
        account_id=account, transactions=numbered_transactions(12, account_id=account)
    ) as fake:
        yield fake


@pytest.fixture
def cli_environment(
    monkeypatch: pytest.MonkeyPatch,
    database_url: str,
    kafka_bootstrap: str,
    topics: Topics,
    master_key: str,
) -> None:
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", kafka_bootstrap)
    monkeypatch.setenv("POSCAL_MASTER_KEY", master_key)
    monkeypatch.setenv("POSCAL_TOPIC_RAW", topics.raw)
    monkeypatch.setenv("POSCAL_TOPIC_CANONICAL", topics.canonical)
    monkeypatch.setenv("POSCAL_TOPIC_DEAD_LETTER", topics.dead_letter)


async def reconcile(
    capsys: pytest.CaptureFixture[str], connection_id: uuid.UUID
) -> tuple[int, dict[str, Any]]:
    """`poscal-sync reconcile --connection ID --json`, as an operator runs it."""
    status, out, _ = await poscal_sync(
        capsys, "reconcile", "--connection", str(connection_id), "--json"
    )
    [line] = out.splitlines()
    return status, orjson.loads(line)


async def oanda_connection(
    pool: asyncpg.Pool, vault: CredentialVault, oanda: FakeOanda
) -> uuid.UUID:
    async with pool.acquire() as conn:
        user_id = (await new_connection(conn, vault)).user_id
        created = await connect_broker_account(
            conn, vault, user_id, "oanda", oanda.account_id, api_url=oanda.url
        )
        await set_broker_credentials(conn, vault, created.connection_id, oanda.token)
    return created.connection_id


async def stored_fills(pool: asyncpg.Pool, connection_id: uuid.UUID) -> set[str]:
    rows = await pool.fetch(
        "SELECT fill_key FROM broker_fills WHERE connection_id = $1", connection_id
    )
    return {row["fill_key"] for row in rows}


async def stored_keys(pool: asyncpg.Pool, connection_id: uuid.UUID) -> set[str]:
    """The connection's fills and cash movements, by key."""
    rows = await pool.fetch(
        "SELECT movement_key FROM broker_cash_movements WHERE connection_id = $1", connection_id
    )
    return await stored_fills(pool, connection_id) | {row["movement_key"] for row in rows}


async def until_stored(
    pool: asyncpg.Pool, connection_id: uuid.UUID, keys: set[str], seconds: float = 30
) -> None:
    deadline = time.monotonic() + seconds
    while not keys <= await stored_keys(pool, connection_id):
        if time.monotonic() > deadline:
            raise AssertionError(f"{sorted(keys)} not written within {seconds}s")
        await asyncio.sleep(0.05)


async def test_deals_the_broker_has_and_the_journal_lacks_are_reported_fetched_and_written(
    kafka_bootstrap: str,
    pool: asyncpg.Pool,
    vault: CredentialVault,
    topics: Topics,
    oanda: FakeOanda,
    cli_environment: None,
    capsys: pytest.CaptureFixture[str],
) -> None:
    connection_id = await oanda_connection(pool, vault, oanda)
    async with running_pipeline(kafka_bootstrap, pool, topics) as pipeline:
        # Nothing synced yet: every deal of the broker's history is missing, and fetched.
        status, first = await reconcile(capsys, connection_id)
        assert status == 4 and first["result"] == "gaps" and first["gaps"] == ["missing_deals"]
        missing = set(first["missing_deals"])
        assert missing and first["fetched_deals"] == len(missing)
        await until_stored(pool, connection_id, missing)
        await pipeline.caught_up()

        # The journal now holds the history: nothing is missing.
        status, second = await reconcile(capsys, connection_id)
        assert (status, second["result"], second["missing_deals"]) == (0, "ok", [])

        # One deal lost from the journal is found, named and written again.
        lost = sorted(await stored_fills(pool, connection_id))[0]
        await pool.execute("DELETE FROM broker_fills WHERE fill_key = $1", lost)
        status, third = await reconcile(capsys, connection_id)
        assert (status, third["missing_deals"], third["fetched_deals"]) == (4, [lost], 1)
        await until_stored(pool, connection_id, {lost})

    row = await pool.fetchrow(
        "SELECT result, missing_deals, fetched_deals, detail FROM connection_reconciliations"
        " WHERE connection_id = $1",
        connection_id,
    )
    assert row is not None
    assert (row["result"], row["missing_deals"], row["fetched_deals"]) == ("gaps", 1, 1)
    assert row["detail"]["missing_deals"] == [lost]  # a JSON object, not a string of one


async def webhook_account(
    kafka_bootstrap: str,
    pool: asyncpg.Pool,
    topics: Topics,
    connection: TestConnection,
    balance: str,
) -> None:
    """A 1000.00 deposit and the fixture's deals (69.44 of P&L after charges), with the balance
    the account reports."""
    deals = [deposit_deal(899_001, "1000.00"), *fixture_deals()]
    body = encode_body(mt5_body(connection.login, deals, balance=balance))
    async with running_pipeline(kafka_bootstrap, pool, topics) as pipeline:
        await pipeline.send_raw(raw_event(connection, body))
        await pipeline.caught_up()


@pytest.mark.parametrize(
    ("reported", "drift", "status"),
    [
        ("1069.44", "0.00", 0),
        ("1069.444", "0.00", 0),
        ("1069.54", "0.10", 4),
        ("1069.43", "-0.01", 4),
    ],
)
async def test_a_webhook_accounts_reported_balance_is_checked_against_its_recorded_deals(
    kafka_bootstrap: str,
    pool: asyncpg.Pool,
    topics: Topics,
    connection: TestConnection,
    cli_environment: None,
    capsys: pytest.CaptureFixture[str],
    reported: str,
    drift: str,
    status: int,
) -> None:
    await webhook_account(kafka_bootstrap, pool, topics, connection, reported)
    exit_status, found = await reconcile(capsys, connection.created.connection_id)
    assert exit_status == status
    assert found["method"] == "balance"
    assert found["balance"] == {
        "reported": reported,
        "computed": "1069.44",
        "currency": "USD",
        "minor_unit_digits": 2,
        "drift": drift,
    }
    assert found["gaps"] == ([] if status == 0 else ["balance_drift"])


async def make_only_due(pool: asyncpg.Pool, connection: TestConnection) -> None:
    """This connection's reconciliation due now, every other one's later."""
    await pool.execute(
        "UPDATE connection_reconciliations SET next_due_at = CASE WHEN connection_id = $1"
        " THEN now() ELSE now() + interval '1 day' END",
        connection.created.connection_id,
    )


class NoPublishing:
    async def publish(self, event: RawEvent) -> None:
        raise AssertionError("a balance check publishes nothing")


async def test_a_due_reconciliation_is_leased_to_one_poller_and_then_due_again_later(
    pool: asyncpg.Pool, connection: TestConnection
) -> None:
    async with httpx.AsyncClient() as http:
        reconciler = Reconciler(pool, None, http, NoPublishing())
        connection_id = connection.created.connection_id
        # A new connection's first reconciliation is due one interval on; this one's is now.
        await reconciler.lease_due("poller-a", 0, 60, 3600)
        await make_only_due(pool, connection)
        first = await reconciler.lease_due("poller-a", 1000, 60, 3600)
        assert connection_id in {t.connection.connection_id for t in first}
        second = await reconciler.lease_due("poller-b", 1000, 60, 3600)
        assert connection_id not in {t.connection.connection_id for t in second}
        [target] = [t for t in first if t.connection.connection_id == connection_id]
        found = await reconciler.reconcile(target)
        assert found.note == "no balance reported yet" and found.result == "ok"
        await reconciler.record(target, found, 3600, scheduled=True)
    row = await pool.fetchrow(
        "SELECT lease_owner, next_due_at > now() + interval '59 minutes' AS later, result"
        " FROM connection_reconciliations WHERE connection_id = $1",
        connection_id,
    )
    assert row is not None
    assert (row["lease_owner"], row["later"], row["result"]) == (None, True, "ok")


async def test_the_pollers_round_records_drift_and_exports_it_as_a_gap(
    kafka_bootstrap: str, pool: asyncpg.Pool, topics: Topics, connection: TestConnection
) -> None:
    await webhook_account(kafka_bootstrap, pool, topics, connection, "1069.54")
    async with httpx.AsyncClient() as http:
        reconciler = Reconciler(pool, None, http, NoPublishing())
        await reconciler.lease_due("poller-a", 0, 60, 3600)
        await make_only_due(pool, connection)
        assert await reconcile_due(reconciler, "poller-a", 3600, 60) == 1
    row = await pool.fetchrow(
        "SELECT result, balance_drift FROM connection_reconciliations WHERE connection_id = $1",
        connection.created.connection_id,
    )
    assert row is not None and (row["result"], str(row["balance_drift"])) == ("gaps", "0.10")
    drifted = await pool.fetchval(
        "SELECT count(*) FROM connection_reconciliations r JOIN mt5_connections c"
        " ON c.id = r.connection_id WHERE c.broker = 'mt5' AND r.balance_drift <> 0"
    )
    exported = REGISTRY.get_sample_value(
        "poscal_reconciliation_gaps", {"broker": "mt5", "kind": "balance_drift"}
    )
    assert exported == drifted >= 1
