"""A migrated database of its own on the session's Postgres server, for specs that act on every
row of a table (re-wrapping every data key), must neither see nor change other specs' rows, or
need the database prepared before the migrations run (Supabase's default grants)."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from services.shared.migrations import apply_migrations

# What a Supabase project has before any migration of ours: the API roles, and every table,
# sequence and function later created in `public` granted to all of them.
SUPABASE_DEFAULT_GRANTS = """
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'anon') THEN
        CREATE ROLE anon NOLOGIN NOINHERIT;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'authenticated') THEN
        CREATE ROLE authenticated NOLOGIN NOINHERIT;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'service_role') THEN
        CREATE ROLE service_role NOLOGIN NOINHERIT BYPASSRLS;
    END IF;
END
$$;
GRANT USAGE ON SCHEMA public TO anon, authenticated, service_role;
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT ALL ON TABLES TO anon, authenticated, service_role;
ALTER DEFAULT PRIVILEGES IN SCHEMA public
    GRANT ALL ON SEQUENCES TO anon, authenticated, service_role;
ALTER DEFAULT PRIVILEGES IN SCHEMA public
    GRANT ALL ON FUNCTIONS TO anon, authenticated, service_role;
"""


def _with_database(dsn: str, name: str) -> str:
    return urlunsplit(urlsplit(dsn)._replace(path=f"/{name}"))


@contextlib.asynccontextmanager
async def scratch_database(
    server_dsn: str, *, before_migrating: str | None = None
) -> AsyncIterator[str]:
    """The DSN of a new, migrated database, dropped (connections and all) on exit;
    `before_migrating` is SQL run in it first."""
    name = f"scratch_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(server_dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        try:
            dsn = _with_database(server_dsn, name)
            if before_migrating is not None:
                setup = await asyncpg.connect(dsn)
                try:
                    await setup.execute(before_migrating)
                finally:
                    await setup.close()
            await apply_migrations(dsn)
            yield dsn
        finally:
            await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    finally:
        await admin.close()
