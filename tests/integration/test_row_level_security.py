"""Row-level security as the PosCal app's users meet it: signed in as the `authenticated` role
with a JWT `sub` claim, a user sees and changes only their own rows, nothing they write can
reach into another user's journal (not even by a reference), credential ciphertext and wrapped
keys stay unread, and the API roles get exactly the grants intended, Supabase's defaults or not."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import asyncpg
import orjson
import pytest

from services.devstack.demo import encode_body
from services.shared.analytics.rollup import fill_zone, keep_portfolios
from services.shared.brokers.mt5 import BROKER
from services.shared.canonical import CanonicalBatch
from services.shared.database import Connection
from services.shared.vault import CredentialVault
from services.writer.repository import JournalRepository
from tests.support.builders import (
    SERVER,
    TestConnection,
    connect_account,
    deposit_deal,
    fixture_deals,
    mt5_body,
    new_connection,
    raw_event,
)
from tests.support.scratch_database import SUPABASE_DEFAULT_GRANTS, scratch_database

map_event = BROKER.map  # every MT5 payload, by its kind

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
async def acting_as(conn: Connection, role: str, sub: uuid.UUID | None) -> AsyncIterator[None]:
    """One transaction as `role` presenting a JWT with this `sub`, as Supabase's API runs one
    request."""
    async with conn.transaction():
        await conn.execute(f"SET LOCAL ROLE {role}")
        if sub is not None:
            await set_claims(conn, {"sub": str(sub), "role": role})
        yield


def signed_in(conn: Connection, user_id: uuid.UUID) -> contextlib.AbstractAsyncContextManager[None]:
    """One transaction as the app's signed-in user."""
    return acting_as(conn, "authenticated", user_id)


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
            "UPDATE mt5_connections SET account_label = 'old demo' WHERE id = $1", connection_id
        )
        for statement in (
            "UPDATE mt5_connections SET lifecycle = 'active' WHERE id = $1",
            "UPDATE mt5_connections SET status = 'idle' WHERE id = $1",
        ):
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                async with conn.transaction():
                    await conn.execute(statement, connection_id)
        deleted = await conn.execute("DELETE FROM mt5_connections WHERE id = $1", connection_id)

    kept = await pool.fetch(
        "SELECT connection_id, status FROM trading_journal WHERE user_id = $1", bob.user_id
    )
    assert (relabelled, deleted) == ("UPDATE 1", "DELETE 1")
    assert [(r["connection_id"], r["status"]) for r in kept] == [(None, "closed")]


# --- Every table that holds user data ---------------------------------------------------------
#
# The tables are found in the catalogue when the tests run, not listed here: a table added later
# with a `user_id` column is covered the moment it exists, and fails until it has an owner-only
# policy (and, below, rows to test it with).

# What a caller did to rows that are not theirs: nothing. Either the statement was refused or
# it matched no row; anything else is spelled out as the statement's status ("UPDATE 2").
UNTOUCHED = "untouched"
# The rows `anon` may call its own: none (the nil uuid is nobody's id).
NOBODY = uuid.UUID(int=0)


async def tables_holding_user_data(conn: Connection) -> list[str]:
    rows = await conn.fetch(
        "SELECT c.table_name FROM information_schema.columns c"
        " JOIN information_schema.tables t USING (table_schema, table_name)"
        " WHERE c.table_schema = 'public' AND c.column_name = 'user_id'"
        " AND t.table_type = 'BASE TABLE' ORDER BY c.table_name"
    )
    return [row["table_name"] for row in rows]


def quoted(table: str) -> str:
    return 'public."' + table.replace('"', '""') + '"'


async def seed_user_data(conn: Connection, vault: CredentialVault) -> TestConnection:
    """A user with rows in every table that holds user data, written the way the services (or,
    for taken trades, the app) write them. A new table needs its rows added here."""
    user = await new_connection(conn, vault)
    connection_id = user.created.connection_id
    # The analytics' rollup, kept in a zone the user asked for, by the writer's transaction,
    # with the portfolio of this account and a second one of the user's.
    second = await connect_account(conn, vault, user.user_id, user.login + 500_000)
    async with conn.transaction():
        await fill_zone(conn, user.user_id, "UTC")
        group = [user.created.account_id, second.created.account_id]
        assert await keep_portfolios(conn, user.user_id, "UTC", [group]) == 1
    await REPOSITORY.apply(conn, [journal_batch(user, [deposit_deal(900000), *fixture_deals()])])
    taken_trade_id = await conn.fetchval(
        "INSERT INTO taken_trades (user_id, account_id, symbol, side) VALUES ($1, $2, 'EURUSD',"
        " 'buy') RETURNING id",
        user.user_id,
        user.created.account_id,
    )
    await conn.execute(
        "INSERT INTO trading_journal (user_id, account_id, taken_trade_id, symbol, side)"
        " VALUES ($1, $2, $3, 'EURUSD', 'buy')",
        user.user_id,
        user.created.account_id,
        taken_trade_id,
    )
    await conn.execute(
        "INSERT INTO webhook_deliveries (connection_id, webhook_id, user_id, event_id, state,"
        " claim_token, accepted_at) VALUES ($1, $2, $3, gen_random_uuid(), 'accepted',"
        " gen_random_uuid(), now())",
        connection_id,
        f"msg_{uuid.uuid4().hex}",
        user.user_id,
    )
    await conn.execute(
        "INSERT INTO webhook_attempts (connection_id, user_id, broker, outcome, status_code,"
        " reason, client_ip, user_agent, webhook_id, received_at) VALUES ($1, $2, 'mt5',"
        " 'accepted', 202, 'accepted', '203.0.113.7', 'MT5-TradeWebhook/1.0', $3, now())",
        connection_id,
        user.user_id,
        f"msg_{uuid.uuid4().hex}",
    )
    await conn.execute(
        "INSERT INTO webhook_verification_failures (connection_id, source, user_id, failures,"
        " first_failure_at, last_failure_at) VALUES ($1, '198.51.100.66', $2, 3, now(), now())",
        connection_id,
        user.user_id,
    )
    await conn.execute(
        "INSERT INTO sync_schedule (connection_id, user_id, cursor, last_error)"
        " VALUES ($1, $2, '900311', 'broker answered 503')",
        connection_id,
        user.user_id,
    )
    await conn.execute(
        "INSERT INTO sync_errors (connection_id, user_id, occurred_at, message,"
        " consecutive_failures) VALUES ($1, $2, now(), 'broker answered 503', 1)",
        connection_id,
        user.user_id,
    )
    await conn.execute(
        "INSERT INTO connection_reconciliations (connection_id, user_id, result,"
        " missing_deals) VALUES ($1, $2, 'gaps', 1)",
        connection_id,
        user.user_id,
    )
    await conn.execute(
        "INSERT INTO cloud_terminals (connection_id, user_id, provider, transaction_id,"
        " remote_account_id, state, connection_status) VALUES ($1, $2, 'metaapi', $3, $4,"
        " 'DEPLOYED', 'CONNECTED')",
        connection_id,
        user.user_id,
        uuid.uuid4().hex,
        str(uuid.uuid4()),
    )
    await conn.execute(
        "INSERT INTO wizard_sessions (user_id, broker, connection_type, sync_method, state,"
        " sealed_credentials, data_key_version, accounts, connection_id, expires_at)"
        " VALUES ($1, 'mt5', 'demo', 'webhook', 'confirmed', '\\x00'::bytea, 1,"
        " '[{\"account_number\": \"1\"}]'::jsonb, $2, now() + interval '1 hour')",
        user.user_id,
        connection_id,
    )
    return user


async def record_attempt_at_an_unknown_connection(conn: Connection) -> None:
    """What an attack looks like: an attempt with no user, which no signed-in user may see."""
    await conn.execute(
        "INSERT INTO webhook_attempts (connection_id, broker, outcome, status_code, reason,"
        " received_at) VALUES (gen_random_uuid(), 'mt5', 'refused', 401, 'unknown_connection',"
        " now())"
    )


@pytest.fixture
async def owner(pool: asyncpg.Pool, vault: CredentialVault) -> TestConnection:
    """User A: rows in every table, which nobody else may read or write."""
    async with pool.acquire() as conn:
        await record_attempt_at_an_unknown_connection(conn)
        return await seed_user_data(conn, vault)


@pytest.fixture
async def intruder(pool: asyncpg.Pool, vault: CredentialVault) -> TestConnection:
    """User B: a signed-in user with rows of their own everywhere, reaching for A's."""
    async with pool.acquire() as conn:
        return await seed_user_data(conn, vault)


async def rows_of(conn: Connection, table: str, user_id: uuid.UUID) -> int:
    count: int = await conn.fetchval(
        f"SELECT count(*) FROM {quoted(table)} WHERE user_id = $1",  # noqa: S608
        user_id,
    )
    return count


async def outcome(conn: Connection, sql: str, *args: object) -> str:
    """What the statement did, in the caller's transaction, undone afterwards."""
    savepoint = conn.transaction()
    await savepoint.start()
    try:
        status = await conn.execute(sql, *args)
    except asyncpg.InsufficientPrivilegeError:
        return UNTOUCHED
    except asyncpg.PostgresError as exc:
        return f"failed: {type(exc).__name__}: {exc}"
    finally:
        await savepoint.rollback()
    verb, *_, count = status.split()
    return UNTOUCHED if count == "0" else f"{verb} {count}"


@dataclass(frozen=True)
class Caller:
    """Who reaches for A's rows: a database role, and the JWT `sub` it presents."""

    role: str
    sub: uuid.UUID
    own_rows: uuid.UUID  # the user_id of the rows that are the caller's own


def another_user(owner: TestConnection, intruder: TestConnection) -> Caller:
    return Caller("authenticated", intruder.user_id, intruder.user_id)


def anon_with_the_owners_sub(owner: TestConnection, intruder: TestConnection) -> Caller:
    # Policies are for `authenticated`: a `sub` claim must give `anon` nothing.
    return Caller("anon", owner.user_id, NOBODY)


async def read_statement(
    conn: Connection, table: str, victim: uuid.UUID, caller: Caller
) -> tuple[str, tuple[object, ...]]:
    # Every row but the caller's: A's, and rows that belong to no user at all.
    return f"SELECT 1 FROM {quoted(table)} WHERE user_id IS DISTINCT FROM $1", (caller.own_rows,)  # noqa: S608


async def insert_statement(
    conn: Connection, table: str, victim: uuid.UUID, caller: Caller
) -> tuple[str, tuple[object, ...]]:
    """A row for A, as small as the table allows: its required columns, copied from one of A's
    rows (so nothing but its owner can be wrong with it)."""
    columns = await conn.fetch(
        "SELECT attname FROM pg_attribute WHERE attrelid = $1::regclass AND attnum > 0"
        " AND NOT attisdropped AND attidentity = '' AND attgenerated = ''"
        " AND (attname = 'user_id' OR (attnotnull AND NOT atthasdef)) ORDER BY attnum",
        quoted(table),
    )
    names = ", ".join(f'"{c["attname"]}"' for c in columns)
    values = await conn.fetchval(
        f"SELECT row_to_json(t)::text FROM {quoted(table)} t WHERE user_id = $1 LIMIT 1",  # noqa: S608
        victim,
    )
    return (
        f"INSERT INTO {quoted(table)} ({names})"  # noqa: S608
        f" SELECT {names} FROM json_populate_record(NULL::{quoted(table)}, $1::json)",
        (values,),
    )


async def update_statement(
    conn: Connection, table: str, victim: uuid.UUID, caller: Caller
) -> tuple[str, tuple[object, ...]]:
    # A column the caller's role may update, so the row policy is what is tested; user_id first.
    column = await conn.fetchval(
        "SELECT attname FROM pg_attribute WHERE attrelid = $1::regclass AND attnum > 0"
        " AND NOT attisdropped AND has_column_privilege($2, attrelid, attnum, 'UPDATE')"
        " ORDER BY attname <> 'user_id', attnum LIMIT 1",
        quoted(table),
        caller.role,
    )
    column = column or "user_id"
    return f'UPDATE {quoted(table)} SET "{column}" = "{column}" WHERE user_id = $1', (victim,)  # noqa: S608


async def delete_statement(
    conn: Connection, table: str, victim: uuid.UUID, caller: Caller
) -> tuple[str, tuple[object, ...]]:
    return f"DELETE FROM {quoted(table)} WHERE user_id = $1", (victim,)  # noqa: S608


async def test_every_table_holding_user_data_is_found_and_has_rows_of_both_users_to_test_on(
    pool: asyncpg.Pool, owner: TestConnection, intruder: TestConnection
) -> None:
    async with pool.acquire() as conn:
        tables = await tables_holding_user_data(conn)
        without_rows = {
            table: [
                name
                for name, user in (("owner", owner), ("intruder", intruder))
                if await rows_of(conn, table, user.user_id) == 0
            ]
            for table in tables
        }

    assert {*OWNED_TABLES, "taken_trades", "broker_cash_movements"} <= set(tables)
    assert {"webhook_deliveries", "webhook_attempts"} <= set(tables)
    # A table listed here needs rows in seed_user_data, or the specs below prove nothing for it.
    assert {table: users for table, users in without_rows.items() if users} == {}


async def test_every_table_holding_user_data_has_row_level_security_enabled(
    pool: asyncpg.Pool,
) -> None:
    async with pool.acquire() as conn:
        tables = await tables_holding_user_data(conn)
        enabled = {
            table: await conn.fetchval(
                "SELECT relrowsecurity FROM pg_class WHERE oid = $1::regclass", quoted(table)
            )
            for table in tables
        }

    assert enabled == dict.fromkeys(tables, True)


async def test_no_view_shows_user_data_past_row_level_security(pool: asyncpg.Pool) -> None:
    # A view runs as its owner, who bypasses RLS, unless it is a security_invoker view.
    views = await pool.fetch(
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = 'user_id'"
        " WHERE n.nspname = 'public' AND c.relkind IN ('v', 'm')"
        " AND NOT coalesce('security_invoker=true' = ANY (c.reloptions), false)"
    )

    assert [view["relname"] for view in views] == []


STATEMENTS = {
    "read": read_statement,
    "insert": insert_statement,
    "update": update_statement,
    "delete": delete_statement,
}
CALLERS = {
    "another_signed_in_user": another_user,
    "anon_presenting_the_owners_sub": anon_with_the_owners_sub,
}


@pytest.mark.parametrize("operation", list(STATEMENTS))
@pytest.mark.parametrize("caller_kind", list(CALLERS))
async def test_nobody_but_the_owner_reads_inserts_updates_or_deletes_a_users_rows_in_any_table(
    pool: asyncpg.Pool,
    owner: TestConnection,
    intruder: TestConnection,
    caller_kind: str,
    operation: str,
) -> None:
    caller = CALLERS[caller_kind](owner, intruder)
    async with pool.acquire() as conn:
        tables = await tables_holding_user_data(conn)
        before = {table: await rows_of(conn, table, owner.user_id) for table in tables}
        statements = {
            table: await STATEMENTS[operation](conn, table, owner.user_id, caller)
            for table in tables
        }
        async with acting_as(conn, caller.role, caller.sub):
            outcomes = {
                table: await outcome(conn, sql, *args) for table, (sql, args) in statements.items()
            }
        after = {table: await rows_of(conn, table, owner.user_id) for table in tables}

    assert outcomes == dict.fromkeys(tables, UNTOUCHED)
    assert after == before


async def test_a_signed_in_user_reads_every_row_they_own_in_every_table(
    pool: asyncpg.Pool, owner: TestConnection, intruder: TestConnection
) -> None:
    async with pool.acquire() as conn:
        tables = await tables_holding_user_data(conn)
        owned = {table: await rows_of(conn, table, owner.user_id) for table in tables}
        async with signed_in(conn, owner.user_id):
            visible = {table: await rows_of(conn, table, owner.user_id) for table in tables}

    assert visible == owned


async def test_the_service_role_reads_and_rewrites_any_users_rows_without_a_claim(
    pool: asyncpg.Pool, owner: TestConnection
) -> None:
    async with pool.acquire() as conn:
        tables = await tables_holding_user_data(conn)
        owned = {table: await rows_of(conn, table, owner.user_id) for table in tables}
        async with acting_as(conn, "service_role", None):
            outcomes = {
                table: tuple(
                    [await outcome(conn, sql, owner.user_id) for sql in every_statement_on(table)]
                )
                for table in tables
            }

    assert outcomes == {table: (f"SELECT {n}", f"UPDATE {n}") for table, n in owned.items()}


def every_statement_on(table: str) -> tuple[str, str]:
    """Read and rewrite one user's rows ($1) of a table. (Deleting is the same USING clause as
    updating, and some rows cannot go alone: credentials hold on to their data key.)"""
    where = "WHERE user_id = $1"
    return (
        f"SELECT 1 FROM {quoted(table)} {where}",  # noqa: S608
        f"UPDATE {quoted(table)} SET user_id = user_id {where}",  # noqa: S608
    )


async def test_a_tables_owner_reads_every_users_rows_because_no_table_forces_row_security(
    pool: asyncpg.Pool, owner: TestConnection, intruder: TestConnection
) -> None:
    # The services may connect as the tables' owner (no BYPASSRLS needed). The test's own role
    # is a superuser, which bypasses RLS anyway, so a plain role takes ownership for the length
    # of one transaction that is rolled back.
    probe = f"poscal_owner_probe_{uuid.uuid4().hex[:8]}"
    async with pool.acquire() as conn:
        tables = await tables_holding_user_data(conn)
        everyones = {
            table: await conn.fetchval(f"SELECT count(*) FROM {quoted(table)}")  # noqa: S608
            for table in tables
        }
        transaction = conn.transaction()
        await transaction.start()
        try:
            await conn.execute(f"CREATE ROLE {probe} NOLOGIN NOSUPERUSER NOBYPASSRLS")
            for table in tables:
                await conn.execute(f"ALTER TABLE {quoted(table)} OWNER TO {probe}")
            await conn.execute(f"SET LOCAL ROLE {probe}")
            seen_by_owner = {
                table: await conn.fetchval(f"SELECT count(*) FROM {quoted(table)}")  # noqa: S608
                for table in tables
            }
        finally:
            await transaction.rollback()

    assert seen_by_owner == everyones


# --- References never cross from one user's rows to another's --------------------------------
#
# Foreign keys are checked past row-level security: with a key of the referenced id alone, a
# signed-in user could point their journal at another user's account or taken trade (and a
# service bug could file one user's fills under another user's connection). So every reference
# between tables that hold user data carries user_id on both sides.


@dataclass(frozen=True)
class Reference:
    """A foreign key from one table holding user data to another."""

    name: str
    table: str
    columns: tuple[str, ...]
    target: str
    target_columns: tuple[str, ...]

    @property
    def stays_with_its_user(self) -> bool:
        return ("user_id", "user_id") in zip(self.columns, self.target_columns, strict=True)

    def __str__(self) -> str:
        columns, target_columns = ", ".join(self.columns), ", ".join(self.target_columns)
        return f"{self.table} ({columns}) -> {self.target} ({target_columns})"


async def references_between_users_rows(conn: Connection) -> list[Reference]:
    rows = await conn.fetch(
        """
        SELECT con.conname, src.relname AS table_name, dst.relname AS target,
            array(SELECT a.attname FROM unnest(con.conkey) WITH ORDINALITY AS k (attnum, n)
                  JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.attnum
                  ORDER BY k.n) AS columns,
            array(SELECT a.attname FROM unnest(con.confkey) WITH ORDINALITY AS k (attnum, n)
                  JOIN pg_attribute a ON a.attrelid = con.confrelid AND a.attnum = k.attnum
                  ORDER BY k.n) AS target_columns
        FROM pg_constraint con
        JOIN pg_class src ON src.oid = con.conrelid
        JOIN pg_class dst ON dst.oid = con.confrelid
        WHERE con.contype = 'f'
          AND src.relnamespace = 'public'::regnamespace
          AND dst.relnamespace = 'public'::regnamespace
          AND EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = con.conrelid
                      AND a.attname = 'user_id' AND NOT a.attisdropped)
          AND EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = con.confrelid
                      AND a.attname = 'user_id' AND NOT a.attisdropped)
        ORDER BY src.relname, con.conname
        """
    )
    return [
        Reference(
            r["conname"],
            r["table_name"],
            tuple(r["columns"]),
            r["target"],
            tuple(r["target_columns"]),
        )
        for r in rows
    ]


async def attempt(conn: Connection, sql: str, *args: object) -> str:
    """What the statement did ("refused: <error>", "done", "no rows"), undone afterwards."""
    savepoint = conn.transaction()
    await savepoint.start()
    try:
        status = await conn.execute(sql, *args)
    except asyncpg.PostgresError as exc:
        return f"refused: {type(exc).__name__}"
    finally:
        await savepoint.rollback()
    return "no rows" if status.split()[-1] == "0" else "done"


async def test_every_reference_between_tables_holding_user_data_carries_the_user(
    pool: asyncpg.Pool,
) -> None:
    async with pool.acquire() as conn:
        references = await references_between_users_rows(conn)

    assert {r.table for r in references} >= {
        "trading_journal",
        "taken_trades",
        "mt5_connections",
        "mt5_credentials",
        "mt5_security_audit",
        "broker_fills",
        "broker_cash_movements",
        "sync_events",
        "webhook_deliveries",
        "sync_schedule",
    }
    assert [str(r) for r in references if not r.stays_with_its_user] == []


# What the app lets a signed-in user write: a reference to one of their accounts or taken trades.
USER_WRITTEN_REFERENCES = [
    ("trading_journal", "account_id", "trading_accounts"),
    ("trading_journal", "taken_trade_id", "taken_trades"),
    ("taken_trades", "account_id", "trading_accounts"),
]


async def first_row_of(conn: Connection, table: str, user_id: uuid.UUID) -> uuid.UUID:
    row_id: uuid.UUID = await conn.fetchval(
        f"SELECT id FROM {quoted(table)} WHERE user_id = $1 ORDER BY created_at LIMIT 1",  # noqa: S608
        user_id,
    )
    assert row_id is not None
    return row_id


@pytest.mark.parametrize(
    ("table", "column", "target"),
    USER_WRITTEN_REFERENCES,
    ids=[f"{t}.{c}" for t, c, _ in USER_WRITTEN_REFERENCES],
)
async def test_a_signed_in_user_points_their_rows_at_their_own_rows_only(
    pool: asyncpg.Pool,
    owner: TestConnection,
    intruder: TestConnection,
    table: str,
    column: str,
    target: str,
) -> None:
    insert = (
        f'INSERT INTO {quoted(table)} (user_id, symbol, side, "{column}")'  # noqa: S608
        " VALUES ($1, 'EURUSD', 'buy', $2)"
    )
    update = f'UPDATE {quoted(table)} SET "{column}" = $2 WHERE user_id = $1'  # noqa: S608
    async with pool.acquire() as conn:
        theirs = await first_row_of(conn, target, owner.user_id)
        mine = await first_row_of(conn, target, intruder.user_id)
        async with signed_in(conn, intruder.user_id):
            outcomes = {
                "insert pointing at another user's row": await attempt(
                    conn, insert, intruder.user_id, theirs
                ),
                "update pointing at another user's row": await attempt(
                    conn, update, intruder.user_id, theirs
                ),
                "insert pointing at their own row": await attempt(
                    conn, insert, intruder.user_id, mine
                ),
                "update pointing at their own row": await attempt(
                    conn, update, intruder.user_id, mine
                ),
            }

    assert outcomes == {
        "insert pointing at another user's row": "refused: ForeignKeyViolationError",
        "update pointing at another user's row": "refused: ForeignKeyViolationError",
        "insert pointing at their own row": "done",
        "update pointing at their own row": "done",
    }


async def test_a_row_cannot_be_given_to_another_user_while_it_points_at_the_first_users_rows(
    pool: asyncpg.Pool, owner: TestConnection, intruder: TestConnection
) -> None:
    # As the services write (no row-level security): a row filed under the wrong user is refused
    # by the schema, whichever service wrote it.
    async with pool.acquire() as conn:
        tables = sorted({r.table for r in await references_between_users_rows(conn)})
        async with conn.transaction():
            outcomes = {
                table: await attempt(
                    conn,
                    f"UPDATE {quoted(table)} SET user_id = $2 WHERE user_id = $1",  # noqa: S608
                    owner.user_id,
                    intruder.user_id,
                )
                for table in tables
            }

    assert outcomes == dict.fromkeys(tables, "refused: ForeignKeyViolationError")


async def test_deleting_an_account_or_a_taken_trade_keeps_the_rows_that_referred_to_it(
    pool: asyncpg.Pool, owner: TestConnection
) -> None:
    async with pool.acquire() as conn:
        journal = await rows_of(conn, "trading_journal", owner.user_id)
        # A connection with a cloud terminal goes only once the services removed the terminal
        # (`connections delete`; deleting it first is refused, see test_metaapi_provisioning).
        await conn.execute("DELETE FROM cloud_terminals WHERE user_id = $1", owner.user_id)
        async with signed_in(conn, owner.user_id):
            await conn.execute("DELETE FROM trading_accounts WHERE user_id = $1", owner.user_id)
            await conn.execute("DELETE FROM taken_trades WHERE user_id = $1", owner.user_id)
        kept = await conn.fetch(
            "SELECT user_id, account_id, taken_trade_id, connection_id FROM trading_journal"
            " WHERE user_id = $1",
            owner.user_id,
        )

    assert journal > 1
    assert [tuple(r) for r in kept] == [(owner.user_id, None, None, None)] * journal


# --- Credentials: owners see the metadata, never the sealed values ----------------------------

CREDENTIAL_METADATA = (
    "id",
    "connection_id",
    "user_id",
    "kind",
    "created_at",
    "expires_at",
    "revoked_at",
    "data_key_version",
    "rotation_forced_at",
    "rotation_forced_reason",
    "last_rotated_at",
)
DATA_KEY_METADATA = ("user_id", "version", "kek_id", "created_at")


@pytest.mark.parametrize(
    "statement",
    [
        "SELECT ciphertext FROM mt5_credentials",
        "SELECT * FROM mt5_credentials",
        "SELECT id FROM mt5_credentials WHERE length(ciphertext) > 0",
        "SELECT wrapped_key FROM user_data_keys",
        "SELECT * FROM user_data_keys",
    ],
)
async def test_a_signed_in_user_cannot_read_credential_ciphertext_or_wrapped_data_keys(
    pool: asyncpg.Pool, owner: TestConnection, statement: str
) -> None:
    async with pool.acquire() as conn, signed_in(conn, owner.user_id):
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.fetch(statement)


@pytest.mark.parametrize(
    ("table", "columns"),
    [("mt5_credentials", CREDENTIAL_METADATA), ("user_data_keys", DATA_KEY_METADATA)],
)
async def test_a_signed_in_user_reads_the_metadata_of_their_own_credentials_and_data_keys(
    pool: asyncpg.Pool,
    owner: TestConnection,
    intruder: TestConnection,
    table: str,
    columns: tuple[str, ...],
) -> None:
    select = f"SELECT {', '.join(columns)} FROM {quoted(table)}"  # noqa: S608
    async with pool.acquire() as conn:
        own = await conn.fetch(f"{select} WHERE user_id = $1 ORDER BY 1, 2", owner.user_id)
        async with signed_in(conn, owner.user_id):
            seen = await conn.fetch(f"{select} ORDER BY 1, 2")

    assert own and [dict(r) for r in seen] == [dict(r) for r in own]


# --- Grants, with or without Supabase's defaults -----------------------------------------------
#
# Supabase grants every new table in `public` to anon, authenticated and service_role; plain
# Postgres grants nothing. Either way the API roles must end up with exactly what the
# migrations intend. Every relation in `public` is listed, so a new table fails here until its
# grants are declared below.

TABLE = ""  # the key of privileges on the whole table, beside those on single columns
OWNER_CRUD = frozenset({"SELECT", "INSERT", "UPDATE", "DELETE"})
READ = frozenset({"SELECT"})
Privileges = dict[str, frozenset[str]]

INTENDED_FOR_AUTHENTICATED: dict[str, Privileges] = {
    # What the app edits; row-level security keeps each user to their own rows.
    "trading_accounts": {TABLE: OWNER_CRUD},
    "taken_trades": {TABLE: OWNER_CRUD},
    "trading_journal": {TABLE: OWNER_CRUD},
    # Read, relabel and delete; identity, lifecycle and sync state are the services'.
    "mt5_connections": {
        TABLE: frozenset({"SELECT", "DELETE"}),
        "account_label": frozenset({"UPDATE"}),
    },
    # Read only, and never the sealed values.
    "mt5_credentials": dict.fromkeys(CREDENTIAL_METADATA, READ),
    "user_data_keys": dict.fromkeys(DATA_KEY_METADATA, READ),
    "mt5_security_audit": {TABLE: READ},
    "broker_fills": {TABLE: READ},
    "broker_cash_movements": {TABLE: READ},
    "sync_events": {TABLE: READ},
    "webhook_deliveries": {TABLE: READ},
    "webhook_attempts": {TABLE: READ},
    "webhook_verification_failures": {TABLE: READ},
    "sync_errors": {TABLE: READ},
    "position_folds": {TABLE: READ},
    "analytics_time_zones": {TABLE: READ},
    "analytics_daily": {TABLE: READ},
    "analytics_portfolios": {TABLE: READ},
    "analytics_portfolio_daily": {TABLE: READ},
    # Which replica holds a lease is the services' business.
    "sync_schedule": dict.fromkeys(
        (
            "connection_id",
            "user_id",
            "cursor",
            "interval_seconds",
            "next_sync_at",
            "consecutive_failures",
            "last_attempt_at",
            "last_success_at",
            "last_error",
            "last_error_at",
            "credentials_rejected_at",
            "rejected_credential_id",
            "updated_at",
        ),
        READ,
    ),
    "connection_reconciliations": dict.fromkeys(
        (
            "connection_id",
            "user_id",
            "next_due_at",
            "last_reconciled_at",
            "result",
            "missing_deals",
            "fetched_deals",
            "balance_drift",
            "detail",
            "updated_at",
        ),
        READ,
    ),
    # The terminal as provisioning left it; the id it was created under is the services'.
    "cloud_terminals": dict.fromkeys(
        (
            "connection_id",
            "user_id",
            "provider",
            "remote_account_id",
            "region",
            "state",
            "connection_status",
            "credential_id",
            "ready_at",
            "removing_at",
            "last_error",
            "created_at",
            "updated_at",
        ),
        READ,
    ),
    # A wizard session as the user follows it; the sealed credentials are the API's alone.
    "wizard_sessions": dict.fromkeys(
        (
            "id",
            "user_id",
            "broker",
            "connection_type",
            "sync_method",
            "state",
            "accounts",
            "progress",
            "error",
            "connection_id",
            "created_at",
            "updated_at",
            "expires_at",
        ),
        READ,
    ),
    # The services' own.
    "schema_migrations": {},
    "webhook_attempts_id_seq": {},
    "ingest_instances": {},
    "ingest_instances_lock_key_seq": {},
    "webhook_audit_gaps": {},
    "webhook_audit_gaps_id_seq": {},
}


@pytest.fixture(scope="module")
async def supabase_database_url(database_url: str) -> AsyncIterator[str]:
    """A database migrated after Supabase's default grants were set up in it."""
    async with scratch_database(database_url, before_migrating=SUPABASE_DEFAULT_GRANTS) as dsn:
        yield dsn


@pytest.fixture(params=["plain_postgres", "supabase_default_grants"])
def migrated_database(
    request: pytest.FixtureRequest, database_url: str, supabase_database_url: str
) -> str:
    return database_url if request.param == "plain_postgres" else supabase_database_url


async def granted(conn: Connection, grantee: str) -> dict[str, Privileges]:
    """Every relation in `public`, with what `grantee` (a role, or PUBLIC) holds on it."""
    relations = await conn.fetch(
        "SELECT relname FROM pg_class WHERE relnamespace = 'public'::regnamespace"
        " AND relkind IN ('r', 'p', 'v', 'm', 'f', 'S')"
    )
    privileges: dict[str, dict[str, set[str]]] = {r["relname"]: {} for r in relations}
    rows = await conn.fetch(
        """
        WITH grantee AS (
            SELECT CASE WHEN $1 = 'PUBLIC' THEN 0::oid ELSE (SELECT oid FROM pg_roles
                                                            WHERE rolname = $1) END AS oid
        )
        SELECT c.relname, '' AS attname, acl.privilege_type
        FROM pg_class c CROSS JOIN LATERAL aclexplode(c.relacl) acl
        WHERE c.relnamespace = 'public'::regnamespace AND acl.grantee = (SELECT oid FROM grantee)
        UNION ALL
        SELECT c.relname, a.attname, acl.privilege_type
        FROM pg_class c
        JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
        CROSS JOIN LATERAL aclexplode(a.attacl) acl
        WHERE c.relnamespace = 'public'::regnamespace AND acl.grantee = (SELECT oid FROM grantee)
        """,
        grantee,
    )
    for row in rows:
        privileges[row["relname"]].setdefault(row["attname"], set()).add(row["privilege_type"])
    return {
        relation: {column: frozenset(p) for column, p in held.items()}
        for relation, held in privileges.items()
    }


async def test_authenticated_holds_exactly_the_intended_grants_on_every_public_table(
    migrated_database: str,
) -> None:
    conn = await asyncpg.connect(migrated_database)
    try:
        held = await granted(conn, "authenticated")
    finally:
        await conn.close()

    assert held == INTENDED_FOR_AUTHENTICATED


@pytest.mark.parametrize("grantee", ["anon", "PUBLIC"])
async def test_anon_and_public_hold_nothing_on_any_public_table(
    migrated_database: str, grantee: str
) -> None:
    conn = await asyncpg.connect(migrated_database)
    try:
        held = await granted(conn, grantee)
    finally:
        await conn.close()

    assert {relation: p for relation, p in held.items() if p} == {}


@pytest.mark.parametrize("role", ["anon", "authenticated"])
async def test_the_migrations_bookkeeping_is_out_of_reach_of_the_api_roles(
    migrated_database: str, role: str
) -> None:
    statements = [
        "SELECT version FROM public.schema_migrations",
        "INSERT INTO public.schema_migrations (version, checksum) VALUES ('9999_planted', 'x')",
        "UPDATE public.schema_migrations SET checksum = 'x'",
        "DELETE FROM public.schema_migrations",
        "TRUNCATE public.schema_migrations",
    ]
    conn = await asyncpg.connect(migrated_database)
    try:
        async with acting_as(conn, role, uuid.uuid4()):
            outcomes = {sql: await attempt(conn, sql) for sql in statements}
    finally:
        await conn.close()

    assert outcomes == dict.fromkeys(statements, "refused: InsufficientPrivilegeError")
