"""The ordered SQL migrations against the real Postgres: each applies once, however often and
however many migrators run, and an applied file may not change."""

from __future__ import annotations

import asyncio
import shutil
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from services.shared.migrations import (
    MIGRATIONS_DIR,
    MigrationChangedError,
    apply_migrations,
    discover,
)

pytestmark = pytest.mark.integration
EVERY_VERSION = [m.version for m in discover()]


@pytest.fixture
async def empty_database(pool: asyncpg.Pool, database_url: str) -> AsyncIterator[str]:
    """A DSN of a new, empty database on the session's server, dropped afterwards."""
    name = f"migrations_{uuid.uuid4().hex[:12]}"
    await pool.execute(f'CREATE DATABASE "{name}"')
    try:
        yield urlunsplit(urlsplit(database_url)._replace(path=f"/{name}"))
    finally:
        await pool.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


async def test_applying_the_migrations_again_applies_nothing(database_url: str) -> None:
    assert await apply_migrations(database_url) == []


async def test_an_empty_database_gets_every_migration_once(empty_database: str) -> None:
    assert await apply_migrations(empty_database) == EVERY_VERSION
    assert await apply_migrations(empty_database) == []

    conn = await asyncpg.connect(empty_database)
    try:
        recorded = await conn.fetch("SELECT version FROM schema_migrations ORDER BY version")
    finally:
        await conn.close()
    assert [r["version"] for r in recorded] == EVERY_VERSION


async def test_concurrent_migrators_apply_each_migration_exactly_once(empty_database: str) -> None:
    results = await asyncio.gather(*(apply_migrations(empty_database) for _ in range(3)))

    assert sorted(version for applied in results for version in applied) == EVERY_VERSION


async def test_a_migration_edited_after_it_was_applied_is_refused(
    empty_database: str, tmp_path: Path
) -> None:
    migrations = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS_DIR, migrations)
    await apply_migrations(empty_database, migrations)
    edited = migrations / f"{EVERY_VERSION[-1]}.sql"
    edited.write_text(edited.read_text() + "\n-- edited afterwards\n")

    with pytest.raises(MigrationChangedError, match=edited.name):
        await apply_migrations(empty_database, migrations)


# --- Tenant isolation (0009): rows that already point at another user's rows -----------------

TENANT_ISOLATION = "0009_tenant_isolation"


def migrations_before(version: str, into: Path) -> Path:
    """A directory with the migrations that come before `version`, as a database had them."""
    into.mkdir()
    for migration in discover():
        if migration.version < version:
            shutil.copy(migration.path, into / migration.path.name)
    return into


async def new_user(conn: asyncpg.Connection) -> uuid.UUID:
    user_id: uuid.UUID = await conn.fetchval(
        "INSERT INTO auth.users (email) VALUES ($1) RETURNING id",
        f"{uuid.uuid4().hex[:10]}@poscal.test",
    )
    return user_id


async def new_account(conn: asyncpg.Connection, user_id: uuid.UUID) -> uuid.UUID:
    account_id: uuid.UUID = await conn.fetchval(
        "INSERT INTO trading_accounts (user_id, name) VALUES ($1, 'account') RETURNING id",
        user_id,
    )
    return account_id


async def test_references_to_another_users_rows_made_before_isolation_are_cleared_and_own_kept(
    empty_database: str, tmp_path: Path
) -> None:
    await apply_migrations(empty_database, migrations_before(TENANT_ISOLATION, tmp_path / "old"))
    conn = await asyncpg.connect(empty_database)
    try:
        victim, planter = await new_user(conn), await new_user(conn)
        victims_account, own_account = (
            await new_account(conn, victim),
            await new_account(conn, planter),
        )
        victims_trade = await conn.fetchval(
            "INSERT INTO taken_trades (user_id, account_id, symbol) VALUES ($1, $2, 'EURUSD')"
            " RETURNING id",
            victim,
            victims_account,
        )
        planted_trade = await conn.fetchval(
            "INSERT INTO taken_trades (user_id, account_id, symbol) VALUES ($1, $2, 'EURUSD')"
            " RETURNING id",
            planter,
            victims_account,
        )
        journal = {
            reference: await conn.fetchval(
                "INSERT INTO trading_journal (user_id, account_id, taken_trade_id, symbol, side)"
                " VALUES ($1, $2, $3, 'EURUSD', 'buy') RETURNING id",
                planter,
                account,
                trade,
            )
            for reference, account, trade in (
                ("another user's account", victims_account, None),
                ("another user's taken trade", own_account, victims_trade),
                ("own account and taken trade", own_account, planted_trade),
            )
        }

        applied = await apply_migrations(empty_database)

        found = {
            r["id"]: (r["user_id"], r["account_id"], r["taken_trade_id"])
            for r in await conn.fetch(
                "SELECT id, user_id, account_id, taken_trade_id FROM trading_journal"
            )
        }
        planted = await conn.fetchrow(
            "SELECT user_id, account_id FROM taken_trades WHERE id = $1", planted_trade
        )
    finally:
        await conn.close()

    assert applied == EVERY_VERSION[EVERY_VERSION.index(TENANT_ISOLATION) :]
    assert {reference: found[row_id] for reference, row_id in journal.items()} == {
        "another user's account": (planter, None, None),
        "another user's taken trade": (planter, own_account, None),
        "own account and taken trade": (planter, own_account, planted_trade),
    }
    assert planted is not None and tuple(planted) == (planter, None)


async def test_a_service_row_filed_under_another_users_connection_stops_the_migration_whole(
    empty_database: str, tmp_path: Path
) -> None:
    await apply_migrations(empty_database, migrations_before(TENANT_ISOLATION, tmp_path / "old"))
    conn = await asyncpg.connect(empty_database)
    try:
        owner, stranger = await new_user(conn), await new_user(conn)
        await conn.execute(
            "INSERT INTO mt5_connections (user_id, account_id, connection_type, account_number)"
            " VALUES ($1, $2, 'demo', '5001')",
            stranger,
            await new_account(conn, owner),
        )

        with pytest.raises(asyncpg.RaiseError, match=r"mt5_connections\.account_id: 1 row"):
            await apply_migrations(empty_database)
        applied = await conn.fetchval(
            "SELECT count(*) FROM schema_migrations WHERE version >= $1", TENANT_ISOLATION
        )
        composite = await conn.fetchval(
            "SELECT count(*) FROM pg_constraint WHERE conname = $1",
            "trading_journal_account_id_user_fkey",
        )
    finally:
        await conn.close()

    assert (applied, composite) == (0, 0)


async def test_every_run_takes_back_what_the_api_roles_were_granted_on_the_bookkeeping(
    empty_database: str,
) -> None:
    # As a database migrated under Supabase's default grants before the migrator took them back.
    await apply_migrations(empty_database)
    conn = await asyncpg.connect(empty_database)
    try:
        await conn.execute("GRANT ALL ON schema_migrations TO PUBLIC, anon, authenticated")
        assert await apply_migrations(empty_database) == []
        held = {
            role: await conn.fetchval(
                "SELECT has_table_privilege($1, 'public.schema_migrations',"
                " 'SELECT, INSERT, UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER')",
                role,
            )
            for role in ("anon", "authenticated")
        }
    finally:
        await conn.close()

    assert held == {"anon": False, "authenticated": False}


# --- Poller credentials (0010): what the old "no credentials" refusal left behind -------------

POLLER_CREDENTIALS = "0010_poller_credentials"
NO_CREDENTIALS = (
    "credentials: no broker credentials stored: `poscal-sync connections set-credentials`;"
    " store new ones with `poscal-sync connections set-credentials`"
)


async def refused_connection(
    conn: asyncpg.Connection, reason: str, *, with_credential: bool
) -> uuid.UUID:
    """A polled connection as the poller left it after refusing it for `reason`."""
    user_id = await new_user(conn)
    connection_id: uuid.UUID = await conn.fetchval(
        "INSERT INTO mt5_connections (user_id, account_id, broker, connection_type,"
        " account_number, status, last_error) VALUES ($1, $2, 'oanda', 'demo', $3, 'error', $4)"
        " RETURNING id",
        user_id,
        await new_account(conn, user_id),
        uuid.uuid4().hex,
        reason,
    )
    await conn.execute(
        "INSERT INTO sync_schedule (connection_id, user_id, consecutive_failures, last_error,"
        " last_error_at, credentials_rejected_at) VALUES ($1, $2, 1, $3, now(), now())",
        connection_id,
        user_id,
        reason,
    )
    if with_credential:
        await conn.execute(
            "INSERT INTO user_data_keys (user_id, version, kek_id, wrapped_key)"
            " VALUES ($1, 1, 'kek', '\\x00')",
            user_id,
        )
        await conn.execute(
            "INSERT INTO mt5_credentials (connection_id, user_id, kind, ciphertext,"
            " data_key_version) VALUES ($1, $2, 'broker_credentials', '\\x00', 1)",
            connection_id,
            user_id,
        )
    return connection_id


async def test_a_connection_refused_for_having_no_credentials_is_only_waiting_after_migrating(
    empty_database: str, tmp_path: Path
) -> None:
    await apply_migrations(empty_database, migrations_before(POLLER_CREDENTIALS, tmp_path / "old"))
    conn = await asyncpg.connect(empty_database)
    try:
        connections = {
            "no credentials stored": await refused_connection(
                conn, NO_CREDENTIALS, with_credential=False
            ),
            "refused by the broker": await refused_connection(
                conn, "credentials: HTTP 401 invalid token", with_credential=True
            ),
        }
        await apply_migrations(empty_database)
        rows = await conn.fetch(
            "SELECT c.id, c.lifecycle, c.status, s.consecutive_failures, s.last_error IS NOT NULL,"
            " s.credentials_rejected_at IS NOT NULL, s.rejected_credential_id"
            " FROM mt5_connections c JOIN sync_schedule s ON s.connection_id = c.id"
        )
    finally:
        await conn.close()

    after = {row["id"]: tuple(row)[1:] for row in rows}
    assert {name: after[connection_id] for name, connection_id in connections.items()} == {
        "no credentials stored": ("active", "idle", 0, False, False, None),
        # Which credential was refused is unknown: it is tried once more (see 0010).
        "refused by the broker": ("active", "error", 1, True, True, None),
    }


async def test_connections_made_before_webhook_urls_could_rotate_keep_their_url(
    empty_database: str, tmp_path: Path
) -> None:
    """Their URL ends in their connection id: 0011 gives them that id as their path id."""
    before = tmp_path / "before"
    before.mkdir()
    for migration in discover():
        if migration.version < "0011":
            shutil.copy(migration.path, before)
    await apply_migrations(empty_database, before)
    conn = await asyncpg.connect(empty_database)
    try:
        user_id = await conn.fetchval(
            "INSERT INTO auth.users (email) VALUES ('early@poscal.test') RETURNING id"
        )
        account_id = await conn.fetchval(
            "INSERT INTO trading_accounts (user_id, name, broker, account_number, account_type)"
            " VALUES ($1, 'early', 'mt5', '1', 'demo') RETURNING id",
            user_id,
        )
        connection_id = await conn.fetchval(
            "INSERT INTO mt5_connections (user_id, account_id, broker, connection_type,"
            " account_number, server, label) VALUES ($1, $2, 'mt5', 'demo', '1', 'S', 'early')"
            " RETURNING id",
            user_id,
            account_id,
        )
        await apply_migrations(empty_database)
        kept = await conn.fetchval(
            "SELECT webhook_path_id FROM mt5_connections WHERE id = $1", connection_id
        )
        later = await conn.fetchrow(
            "INSERT INTO mt5_connections (user_id, account_id, broker, connection_type,"
            " account_number, server, account_label)"
            " VALUES ($1, $2, 'mt5', 'demo', '2', 'S', 'later')"
            " RETURNING id, webhook_path_id",
            user_id,
            account_id,
        )
    finally:
        await conn.close()
    assert kept == connection_id
    assert later is not None and later["webhook_path_id"] != later["id"]


async def test_oanda_financing_booked_as_the_accounts_is_removed_and_its_history_polled_again(
    empty_database: str, tmp_path: Path
) -> None:
    """Re-polled, it would count beside its per-trade charges (0013)."""
    await apply_migrations(
        empty_database, migrations_before("0013_oanda_financing_by_trade", tmp_path / "old")
    )
    conn = await asyncpg.connect(empty_database)
    try:
        user_id = await new_user(conn)
        account_id = await new_account(conn, user_id)
        connections = {}
        for broker, number in (("oanda", "101-004-1-001"), ("mt5", "42")):
            connections[broker] = await conn.fetchval(
                "INSERT INTO mt5_connections (user_id, account_id, broker, connection_type,"
                " account_number, server, label) VALUES ($1, $2, $3, 'demo', $4, 'S', 'x')"
                " RETURNING id",
                user_id,
                account_id,
                broker,
                number,
            )
            await conn.execute(
                "INSERT INTO sync_schedule (connection_id, user_id, cursor) VALUES ($1, $2, '900')",
                connections[broker],
                user_id,
            )
        for key, broker, kind, position in (
            ("oanda:101-004-1-001:txn:5", "oanda", "financing", None),  # booked before 0013
            ("oanda:101-004-1-001:txn:6:trade:3", "oanda", "financing", "oanda:101-004-1-001:3"),
            ("oanda:101-004-1-001:txn:7", "oanda", "deposit", None),
            ("mt5:S:42:deal:8", "mt5", "financing", None),
        ):
            await conn.execute(
                "INSERT INTO broker_cash_movements (movement_key, user_id, connection_id,"
                " account_id, kind, amount, executed_at, broker_time, broker_ref, event_id,"
                " position_key) VALUES ($1, $2, $3, $4, $5, -0.5, now(), 't', 'r',"
                " gen_random_uuid(), $6)",
                key,
                user_id,
                connections[broker],
                account_id,
                kind,
                position,
            )
        await apply_migrations(empty_database)
        kept = {
            r["movement_key"]
            for r in await conn.fetch("SELECT movement_key FROM broker_cash_movements")
        }
        cursors = {
            r["connection_id"]: r["cursor"]
            for r in await conn.fetch("SELECT connection_id, cursor FROM sync_schedule")
        }
    finally:
        await conn.close()
    assert kept == {
        "oanda:101-004-1-001:txn:6:trade:3",
        "oanda:101-004-1-001:txn:7",
        "mt5:S:42:deal:8",
    }
    assert cursors == {connections["oanda"]: None, connections["mt5"]: "900"}
