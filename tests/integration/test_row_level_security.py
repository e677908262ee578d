"""Row-level security as the PosCal app's users meet it: signed in as the `authenticated` role
with a JWT `sub` claim, a user sees and changes only their own rows, and nothing they write can
reach into another user's journal."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import asyncpg
import orjson
import pytest

from services.devstack.demo import encode_body
from services.normalizer.mappers.mt5 import map_event
from services.shared.canonical import CanonicalBatch
from services.shared.database import Connection
from services.shared.vault import CredentialVault
from services.writer.repository import JournalRepository
from tests.support.builders import (
    SERVER,
    TestConnection,
    fixture_deals,
    mt5_body,
    new_connection,
    raw_event,
)

pytestmark = pytest.mark.integration
REPOSITORY = JournalRepository()
OWNED_TABLES = (
    "trading_accounts",
    "trading_journal",
    "mt5_connections",
    "mt5_credentials",
    "mt5_security_audit",
    "user_data_keys",
    "broker_fills",
    "sync_events",
)


async def set_claims(conn: Connection, claims: dict[str, str]) -> None:
    # SET takes no bind parameters; the claims are our own JSON, quoted as a literal.
    literal = orjson.dumps(claims).decode().replace("'", "''")
    await conn.execute(f"SET LOCAL request.jwt.claims = '{literal}'")


@contextlib.asynccontextmanager
async def signed_in(conn: Connection, user_id: uuid.UUID) -> AsyncIterator[None]:
    """One transaction as the app's signed-in user, the way Supabase's API runs a request."""
    async with conn.transaction():
        await conn.execute("SET LOCAL ROLE authenticated")
        await set_claims(conn, {"sub": str(user_id), "role": "authenticated"})
        yield


def journal_batch(connection: TestConnection, deals: list[dict[str, Any]]) -> CanonicalBatch:
    body = encode_body(mt5_body(connection.login, deals))
    return map_event(raw_event(connection, body)).batch


def position_key(connection: TestConnection) -> str:
    return f"mt5:{SERVER}:{connection.login}:800001"


async def journal_of(pool: asyncpg.Pool, connection: TestConnection) -> list[dict[str, Any]]:
    rows = await pool.fetch(
        "SELECT user_id, volume, closed_volume, profit, status, notes FROM trading_journal"
        " WHERE connection_id = $1",
        connection.created.connection_id,
    )
    return [dict(r) for r in rows]


@pytest.fixture
async def alice(pool: asyncpg.Pool, vault: CredentialVault) -> TestConnection:
    async with pool.acquire() as conn:
        return await new_connection(conn, vault)


@pytest.fixture
async def bob(pool: asyncpg.Pool, vault: CredentialVault) -> TestConnection:
    """A second user, with the fixture's closed trade already in the journal."""
    async with pool.acquire() as conn:
        bob = await new_connection(conn, vault)
        await REPOSITORY.apply(conn, [journal_batch(bob, fixture_deals())])
    return bob


async def test_auth_uid_is_the_sub_claim_of_the_current_transaction_only(
    pool: asyncpg.Pool,
) -> None:
    user_id = uuid.uuid4()
    async with pool.acquire() as conn:
        async with conn.transaction():
            await conn.execute(f"""SET LOCAL request.jwt.claims = '{{"sub": "{user_id}"}}'""")
            inside = await conn.fetchval("SELECT auth.uid()")
        after = await conn.fetchval("SELECT auth.uid()")

    assert (inside, after) == (user_id, None)


async def test_a_signed_in_user_sees_only_their_own_rows(
    pool: asyncpg.Pool, alice: TestConnection, bob: TestConnection
) -> None:
    async with pool.acquire() as conn:
        await REPOSITORY.apply(conn, [journal_batch(alice, fixture_deals())])
        async with signed_in(conn, alice.user_id):
            owners = {
                table: {r["user_id"] for r in await conn.fetch(f"SELECT user_id FROM {table}")}  # noqa: S608
                for table in OWNED_TABLES
            }

    assert owners == {table: {alice.user_id} for table in OWNED_TABLES}


async def test_the_authenticated_role_without_a_claim_sees_nothing(
    pool: asyncpg.Pool, bob: TestConnection
) -> None:
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SET LOCAL ROLE authenticated")
        visible = await conn.fetchval("SELECT count(*) FROM trading_journal")

    assert visible == 0


async def test_a_signed_in_user_can_annotate_their_own_trade(
    pool: asyncpg.Pool, bob: TestConnection
) -> None:
    async with pool.acquire() as conn, signed_in(conn, bob.user_id):
        updated = await conn.execute("UPDATE trading_journal SET notes = 'took profit at TP'")

    assert updated == "UPDATE 1"
    assert [row["notes"] for row in await journal_of(pool, bob)] == ["took profit at TP"]


async def test_a_signed_in_user_cannot_update_or_delete_another_users_rows(
    pool: asyncpg.Pool, alice: TestConnection, bob: TestConnection
) -> None:
    before = await journal_of(pool, bob)
    async with pool.acquire() as conn, signed_in(conn, alice.user_id):
        updated = await conn.execute(
            "UPDATE trading_journal SET notes = 'mine now', profit = 0 WHERE user_id = $1",
            bob.user_id,
        )
        deleted = await conn.execute("DELETE FROM trading_journal WHERE user_id = $1", bob.user_id)

    assert (updated, deleted) == ("UPDATE 0", "DELETE 0")
    assert await journal_of(pool, bob) == before


@pytest.mark.parametrize(
    "statement",
    [
        "DELETE FROM broker_fills",
        "UPDATE broker_fills SET profit = 0",
        "DELETE FROM sync_events",
        "DELETE FROM mt5_security_audit",
        "UPDATE mt5_credentials SET data_key_version = data_key_version",
        "DELETE FROM user_data_keys",
    ],
)
async def test_tables_the_services_keep_are_read_only_to_signed_in_users(
    pool: asyncpg.Pool, bob: TestConnection, statement: str
) -> None:
    async with pool.acquire() as conn, signed_in(conn, bob.user_id):
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            async with conn.transaction():
                await conn.execute(statement)


async def test_a_signed_in_user_cannot_write_rows_for_another_user(
    pool: asyncpg.Pool, alice: TestConnection, bob: TestConnection
) -> None:
    async with pool.acquire() as conn, signed_in(conn, alice.user_id):
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            async with conn.transaction():
                await conn.execute(
                    "INSERT INTO trading_journal (user_id, symbol, side) VALUES ($1, 'X', 'buy')",
                    bob.user_id,
                )
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            async with conn.transaction():
                await conn.execute(
                    "INSERT INTO trading_journal (user_id, symbol, side)"
                    " VALUES ($1, 'EURUSD', 'buy')",
                    alice.user_id,
                )
                await conn.execute(
                    "UPDATE trading_journal SET user_id = $1 WHERE user_id = $2",
                    bob.user_id,
                    alice.user_id,
                )


async def test_fills_another_user_writes_never_enter_a_users_journal_row(
    pool: asyncpg.Pool, alice: TestConnection, vault: CredentialVault
) -> None:
    deals = fixture_deals()
    async with pool.acquire() as conn:
        victim = await new_connection(conn, vault)
        await REPOSITORY.apply(conn, [journal_batch(victim, deals[:1])])
        async with signed_in(conn, alice.user_id):
            # Whether the insert is refused or ignored, the victim's row must not change.
            with contextlib.suppress(asyncpg.InsufficientPrivilegeError):
                async with conn.transaction():
                    await conn.execute(
                        "INSERT INTO broker_fills (fill_key, position_key, user_id,"
                        " connection_id, account_id, broker, symbol, side, entry, volume, price,"
                        " profit, executed_at, broker_time, broker_ref, event_id) VALUES"
                        " ('forged:1', $1, $2, $3, $4, 'mt5', 'EURUSD', 'sell', 'out', 0.30,"
                        " 1.2, -100000, now(), '0', '1', gen_random_uuid())",
                        position_key(victim),
                        alice.user_id,
                        alice.created.connection_id,
                        alice.created.account_id,
                    )
        await REPOSITORY.apply(conn, [journal_batch(victim, deals[1:2])])

    assert [
        (r["closed_volume"], r["profit"], r["status"]) for r in await journal_of(pool, victim)
    ] == [(Decimal("0.10"), Decimal("15.00"), "open")]


async def test_a_row_another_user_plants_under_a_trade_id_does_not_hide_the_owners_trade(
    pool: asyncpg.Pool, alice: TestConnection, vault: CredentialVault
) -> None:
    async with pool.acquire() as conn:
        victim = await new_connection(conn, vault)
        async with signed_in(conn, alice.user_id):
            with contextlib.suppress(asyncpg.InsufficientPrivilegeError):
                async with conn.transaction():
                    await conn.execute(
                        "INSERT INTO trading_journal (user_id, symbol, side, mt5_trade_id)"
                        " VALUES ($1, 'EURUSD', 'buy', $2)",
                        alice.user_id,
                        position_key(victim),
                    )
        [outcome] = await REPOSITORY.apply(conn, [journal_batch(victim, fixture_deals())])

    assert outcome.fills_inserted == 3
    assert [(r["user_id"], r["status"]) for r in await journal_of(pool, victim)] == [
        (victim.user_id, "closed")
    ]


async def test_a_signed_in_user_can_relabel_and_delete_their_connection_and_keeps_the_journal(
    pool: asyncpg.Pool, bob: TestConnection
) -> None:
    connection_id = bob.created.connection_id
    async with pool.acquire() as conn, signed_in(conn, bob.user_id):
        relabelled = await conn.execute(
            "UPDATE mt5_connections SET label = 'old demo' WHERE id = $1", connection_id
        )
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            async with conn.transaction():
                await conn.execute(
                    "UPDATE mt5_connections SET status = 'active' WHERE id = $1", connection_id
                )
        deleted = await conn.execute("DELETE FROM mt5_connections WHERE id = $1", connection_id)

    kept = await pool.fetch(
        "SELECT connection_id, status FROM trading_journal WHERE user_id = $1", bob.user_id
    )
    assert (relabelled, deleted) == ("UPDATE 1", "DELETE 1")
    assert [(r["connection_id"], r["status"]) for r in kept] == [(None, "closed")]
