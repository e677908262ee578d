"""Applies the ordered SQL files in schemas/migrations once each, serialised by an advisory lock."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import asyncpg

# The source tree's schemas/migrations; an installed image points POSCAL_MIGRATIONS_DIR at its copy.
MIGRATIONS_DIR = Path(
    os.environ.get("POSCAL_MIGRATIONS_DIR")
    or Path(__file__).resolve().parents[2] / "schemas" / "migrations"
)
_LOCK_KEY = 0x706F7363  # any constant shared by every migrator of this database

_CREATE_BOOKKEEPING = (
    "CREATE TABLE IF NOT EXISTS public.schema_migrations ("
    " version text PRIMARY KEY, checksum text NOT NULL,"
    " applied_at timestamptz NOT NULL DEFAULT now())"
)

# The bookkeeping is the migrator's alone. On Supabase every new table in `public` is granted to
# anon and authenticated by default, so the grants are taken back on every run (which also
# mends a database migrated before this), and row-level security with no policy hides the rows
# from anyone granted them later. The API roles may not exist yet (0001 creates them on plain
# Postgres); roles created afterwards hold nothing here.
_LOCK_DOWN_BOOKKEEPING = """
DO $$
DECLARE
    api_role text;
BEGIN
    IF NOT (SELECT relrowsecurity FROM pg_class
            WHERE oid = 'public.schema_migrations'::regclass) THEN
        ALTER TABLE public.schema_migrations ENABLE ROW LEVEL SECURITY;
    END IF;
    REVOKE ALL ON public.schema_migrations FROM PUBLIC;
    FOR api_role IN SELECT rolname FROM pg_roles WHERE rolname IN ('anon', 'authenticated') LOOP
        EXECUTE format('REVOKE ALL ON public.schema_migrations FROM %I', api_role);
    END LOOP;
END
$$
"""


@dataclass(frozen=True)
class Migration:
    version: str
    path: Path

    @property
    def sql(self) -> str:
        return self.path.read_text(encoding="utf-8")

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.path.read_bytes()).hexdigest()


class MigrationChangedError(Exception):
    """An applied migration's file was edited afterwards: add a new migration instead."""


def discover(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    return [Migration(p.stem, p) for p in sorted(directory.glob("*.sql"))]


async def apply_migrations(dsn: str, directory: Path = MIGRATIONS_DIR) -> list[str]:
    """Apply every pending migration, each in its own transaction; returns the versions applied."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", _LOCK_KEY)
        try:
            async with conn.transaction():
                await conn.execute(_CREATE_BOOKKEEPING)
                await conn.execute(_LOCK_DOWN_BOOKKEEPING)
            applied = {
                r["version"]: r["checksum"]
                for r in await conn.fetch("SELECT version, checksum FROM public.schema_migrations")
            }
            done = []
            for migration in discover(directory):
                if migration.version in applied:
                    if applied[migration.version] != migration.checksum:
                        raise MigrationChangedError(
                            f"{migration.path.name} changed after it was applied"
                        )
                    continue
                async with conn.transaction():
                    await conn.execute(migration.sql)
                    await conn.execute(
                        "INSERT INTO public.schema_migrations (version, checksum) VALUES ($1, $2)",
                        migration.version,
                        migration.checksum,
                    )
                done.append(migration.version)
            return done
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", _LOCK_KEY)
    finally:
        await conn.close()
