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
