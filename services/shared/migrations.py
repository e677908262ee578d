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
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS public.schema_migrations ("
                " version text PRIMARY KEY, checksum text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            )
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
