"""End to end through the real poller, Kafka, normalizer and writer processes, against local fake
OANDA v20 and IBKR Flex servers built from the real samples: journal rows and balances match the
samples; polling again changes nothing; a crash between publish and cursor save duplicates
nothing; 429 is waited out; a refused token stops polling until it is replaced; two poller
replicas never poll one connection at once."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import asyncpg
import orjson
import pytest

from services.devstack.ports import dies_with_parent
from services.devstack.stack import DevStack
from services.shared.connection_admin.credentials import set_broker_credentials
from services.shared.vault import CredentialVault
from tests.support.builders import FIXTURES, connect_broker_account, new_connection
from tests.support.fake_flex import FakeFlex
from tests.support.fake_oanda import FakeOanda, load_sample, numbered_transactions
from tests.support.fake_oanda import sample_transactions as oanda_samples

pytestmark = pytest.mark.e2e
LONG_AGO = datetime(2000, 1, 1, tzinfo=UTC)


def oanda_account() -> str:
    return f"101-004-{uuid.uuid4().int % 10**7:07d}-001"


@pytest.fixture
def oanda() -> Iterator[FakeOanda]:
    account = oanda_account()
    transactions = numbered_transactions(len(oanda_samples()), account_id=account)
    with FakeOanda(account_id=account, transactions=transactions) as fake:
        yield fake


async def polled_connection(
    pool: asyncpg.Pool,
    vault: CredentialVault,
    *,
    broker: str,
    account: str,
    api_url: str,
    credentials: str,
) -> uuid.UUID:
    """A demo connection of a new user, its credentials stored, due for sync now."""
    async with pool.acquire() as conn:
        user_id = (await new_connection(conn, vault)).user_id
        created = await connect_broker_account(
            conn,
            vault,
            user_id,
            broker,
            account,
            account_label=f"{broker} e2e",
            ingest_url="http://127.0.0.1:1",
            api_url=api_url,
            poll_interval_seconds=1,
        )
        await set_broker_credentials(conn, vault, created.connection_id, credentials)
        await sync_now(conn, created.connection_id)
    return created.connection_id


async def polled_oanda_connection(
    pool: asyncpg.Pool, vault: CredentialVault, oanda: FakeOanda, token: str | None = None
) -> uuid.UUID:
    """A polled connection to the fake OANDA's account, with its token unless given another."""
    return await polled_connection(
        pool,
        vault,
        broker="oanda",
        account=oanda.account_id,
        api_url=oanda.url,
        credentials=oanda.token if token is None else token,
    )


async def sync_now(conn: Any, connection_id: uuid.UUID) -> None:
    await conn.execute(
        "UPDATE sync_schedule SET next_sync_at = now() WHERE connection_id = $1", connection_id
    )


async def eventually(check: Callable[[], Awaitable[bool]], what: str, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not await check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)


async def schedule_of(pool: asyncpg.Pool, connection_id: uuid.UUID) -> dict[str, Any]:
    row = await pool.fetchrow(
        "SELECT s.*, c.status, c.last_error AS connection_error FROM sync_schedule s"
        " JOIN mt5_connections c ON c.id = s.connection_id WHERE s.connection_id = $1",
        connection_id,
    )
    assert row is not None
    return dict(row)


async def journal_of(pool: asyncpg.Pool, connection_id: uuid.UUID) -> dict[str, tuple[Any, ...]]:
    rows = await pool.fetch(
        "SELECT mt5_trade_id, status, volume, closed_volume, entry_price, profit, swap,"
        " connection_type, fill_count FROM trading_journal WHERE connection_id = $1",
        connection_id,
    )
    return {r["mt5_trade_id"]: tuple(r)[1:] for r in rows}


async def balance_of(pool: asyncpg.Pool, connection_id: uuid.UUID) -> Decimal | None:
    balance: Decimal | None = await pool.fetchval(
        "SELECT a.current_balance FROM trading_accounts a"
        " JOIN mt5_connections c ON c.account_id = a.id WHERE c.id = $1",
        connection_id,
    )
    return balance


async def synced_after(pool: asyncpg.Pool, connection_id: uuid.UUID, moment: Any) -> bool:
    done = await pool.fetchval(
        "SELECT last_success_at > $2 FROM sync_schedule WHERE connection_id = $1",
        connection_id,
        moment,
    )
    return bool(done)


async def test_an_oanda_account_is_polled_into_the_journal_and_polling_again_changes_nothing(
    pool: asyncpg.Pool,
    vault: CredentialVault,
    stack: DevStack,
    oanda: FakeOanda,
    caught_up: Callable[[], Awaitable[None]],
) -> None:
    connection_id = await polled_oanda_connection(pool, vault, oanda)
    account = oanda.account_id

    async def journal_complete() -> bool:
        return len(await journal_of(pool, connection_id)) == 3 and bool(
            await balance_of(pool, connection_id)
        )

    await eventually(journal_complete, "the polled transactions to reach the journal")
    reduced = load_sample("order_fill_trade_reduced_partial_close.json")["orderFillTransaction"]
    closed = load_sample("trade_close_full_response.json")["orderFillTransaction"]
    journal = await journal_of(pool, connection_id)
    assert journal[f"oanda:{account}:1990"][:3] == ("open", Decimal("1"), Decimal("0"))
    assert journal[f"oanda:{account}:1990"][3] == Decimal("1.05260")
    assert journal[f"oanda:{account}:1030"][4:6] == (
        Decimal(reduced["tradeReduced"]["realizedPL"]),
        Decimal(reduced["tradeReduced"]["financing"]),
    )
    assert journal[f"oanda:{account}:2313"][:2] == ("closed", Decimal("100"))
    assert journal[f"oanda:{account}:2313"][4] == Decimal(closed["tradesClosed"][0]["realizedPL"])
    assert {row[6] for row in journal.values()} == {"demo"}
    summary = load_sample("account_summary.json")["account"]
    assert await balance_of(pool, connection_id) == Decimal(summary["balance"])
    assert (await schedule_of(pool, connection_id))["cursor"] == str(oanda.last_transaction_id)

    events = await pool.fetchval(
        "SELECT count(*) FROM sync_events WHERE connection_id = $1", connection_id
    )
    fills = await pool.fetchval(
        "SELECT count(*) FROM broker_fills WHERE connection_id = $1", connection_id
    )

    async def poll_once_more(cursor: str | None) -> None:
        """Poll again from `cursor` (as a crash before the cursor was saved leaves it)."""
        moment = await pool.fetchval("SELECT now()")
        await pool.execute(
            "UPDATE sync_schedule SET cursor = $2, next_sync_at = now() WHERE connection_id = $1",
            connection_id,
            cursor,
        )
        await eventually(lambda: synced_after(pool, connection_id, moment), "another sync")
        await caught_up()  # whatever that sync published has been normalized and written

    await poll_once_more(str(oanda.last_transaction_id))  # nothing new at the broker
    await poll_once_more(None)  # the whole history again: the same page, the same event
    assert (
        await pool.fetchval(
            "SELECT count(*) FROM sync_events WHERE connection_id = $1", connection_id
        )
        == events
    )
    await poll_once_more("8")  # crashed after publishing 9..14, before saving the cursor
    assert await journal_of(pool, connection_id) == journal
    assert await balance_of(pool, connection_id) == Decimal(summary["balance"])
    assert (
        await pool.fetchval(
            "SELECT count(*) FROM broker_fills WHERE connection_id = $1", connection_id
        )
        == fills
    )


async def test_a_rate_limited_broker_is_waited_out(
    pool: asyncpg.Pool, vault: CredentialVault, stack: DevStack, oanda: FakeOanda
) -> None:
    oanda.fail_next(2, 429, retry_after="1")
    connection_id = await polled_oanda_connection(pool, vault, oanda)
    await eventually(lambda: synced_after(pool, connection_id, LONG_AGO), "a sync past the 429s")
    assert oanda.requests.count("/summary") >= 3
    row = await schedule_of(pool, connection_id)
    assert (row["consecutive_failures"], row["status"]) == (0, "idle")


async def test_a_refused_token_stops_polling_until_it_is_replaced(
    pool: asyncpg.Pool, vault: CredentialVault, stack: DevStack, oanda: FakeOanda
) -> None:
    connection_id = await polled_oanda_connection(pool, vault, oanda, token="not-the-token")

    async def refused() -> bool:
        return (await schedule_of(pool, connection_id))["credentials_rejected_at"] is not None

    await eventually(refused, "the refused token to be recorded")
    row = await schedule_of(pool, connection_id)
    assert row["status"] == "error" and "set-credentials" in row["connection_error"]
    asked = oanda.requests.count()
    async with pool.acquire() as conn:
        await sync_now(conn, connection_id)
    # The poller leases what is due oldest first: once a connection made due after this one has
    # synced, the poller has looked at this one too.
    account = oanda_account()
    with FakeOanda(
        account_id=account, transactions=numbered_transactions(1, account_id=account)
    ) as later:
        due_later = await polled_oanda_connection(pool, vault, later)
        await eventually(lambda: synced_after(pool, due_later, LONG_AGO), "a sync due later")
    assert oanda.requests.count() == asked  # not asked again with the refused token

    async with pool.acquire() as conn:
        await set_broker_credentials(conn, vault, connection_id, oanda.token)
    await eventually(lambda: synced_after(pool, connection_id, LONG_AGO), "a sync")
    assert (await schedule_of(pool, connection_id))["status"] == "idle"


@contextlib.contextmanager
def second_poller(stack: DevStack) -> Iterator[None]:
    env = {
        **os.environ,
        **stack.env(),
        "POSCAL_POLLER_ID": "second-replica",
        "POSCAL_POLLER_TICK_SECONDS": "0.2",
        "POSCAL_TOPIC_RAW": stack.topics.raw,
        "POSCAL_LOG_FORMAT": "json",
    }
    with (stack.logs / "poller-2.log").open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "services.poller"],
            env=env,
            stdout=log,
            stderr=log,
            preexec_fn=dies_with_parent(signal.SIGTERM),
        )
    try:
        yield
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


async def test_two_poller_replicas_never_poll_one_connection_at_once(
    pool: asyncpg.Pool, vault: CredentialVault, stack: DevStack
) -> None:
    account = oanda_account()
    transactions = numbered_transactions(len(oanda_samples()), account_id=account)
    with (
        FakeOanda(account_id=account, transactions=transactions, delay_seconds=0.3) as slow,
        second_poller(stack),
    ):
        connection_id = await polled_oanda_connection(pool, vault, slow)

        async def polled_repeatedly() -> bool:
            return slow.requests.count("/summary") >= 4

        await eventually(polled_repeatedly, "several polls", seconds=40)
        assert slow.requests.most_concurrent(account) == 1
    assert (await schedule_of(pool, connection_id))["consecutive_failures"] == 0


async def test_an_ibkr_flex_statement_is_polled_into_the_journal(
    pool: asyncpg.Pool, vault: CredentialVault, stack: DevStack
) -> None:
    statement = (FIXTURES / "constructed" / "ibkr_flex_round_trips.xml").read_bytes()
    with FakeFlex(statement=statement) as flex:
        flex.in_progress(1)  # "statement generation in progress" first, as Flex often answers
        credentials = orjson.dumps({"token": flex.token, "query_id": flex.query_id}).decode()
        connection_id = await polled_connection(
            pool,
            vault,
            broker="ibkr",
            account="U1234567",
            api_url=flex.url,
            credentials=credentials,
        )

        async def journal_complete() -> bool:
            return len(await journal_of(pool, connection_id)) == 3

        await eventually(journal_complete, "the Flex trades to reach the journal")
    journal = await journal_of(pool, connection_id)
    first_round_trip = journal["ibkr:U1234567:265598"]
    assert first_round_trip[:3] == ("closed", Decimal("100"), Decimal("100"))
    assert first_round_trip[4] == Decimal("547.85")
    assert journal["ibkr:U1234567:265598:7003"][:2] == ("open", Decimal("50"))
    # MSFT: one execution cancelled, one corrected: what is left is the corrected one.
    msft = journal["ibkr:U1234567:272093"]
    assert (msft[0], msft[1], msft[3]) == ("open", Decimal("10"), Decimal("410.10"))
