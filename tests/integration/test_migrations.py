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
