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
            " account_number, server, label) VALUES ($1, $2, 'mt5', 'demo', '2', 'S', 'later')"
            " RETURNING id, webhook_path_id",
            user_id,
            account_id,
        )
    finally:
        await conn.close()
    assert kept == connection_id
    assert later is not None and later["webhook_path_id"] != later["id"]
