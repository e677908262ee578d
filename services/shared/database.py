"""asyncpg connection pools set up the one way the services use them."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, urlsplit

import asyncpg
import orjson
from asyncpg.pool import PoolConnectionProxy

# What a query runs on: a connection of its own, or one borrowed from a pool.
Connection = asyncpg.Connection | PoolConnectionProxy

# Postgres cannot be reached right now (down, starting, restarting, full): worth waiting for.
# Anything else at connect time (a bad password, a database that does not exist) is
# configuration, which no wait can fix.
POSTGRES_UNREACHABLE: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.TooManyConnectionsError,
    asyncpg.InterfaceError,
)
# ...except a client misconfigured (a DSN option that is no option), an InterfaceError too.
POSTGRES_MISCONFIGURED: tuple[type[BaseException], ...] = (
    asyncpg.exceptions.ClientConfigurationError,
)


async def _init_connection(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec(
        "jsonb",
        encoder=lambda v: orjson.dumps(v).decode(),
        decoder=orjson.loads,
        schema="pg_catalog",
    )


async def create_pool(
    dsn: str, *, min_size: int = 1, max_size: int = 5, **kwargs: Any
) -> asyncpg.Pool:
    # A connection attempt that hangs (a host that drops packets) fails after 10 s, not
    # asyncpg's default minute, so a waiting service says so and tries again.
    kwargs.setdefault("timeout", 10)
    pool: asyncpg.Pool = await asyncpg.create_pool(
        dsn, min_size=min_size, max_size=max_size, init=_init_connection, **kwargs
    )
    return pool


def dsn_address(dsn: str) -> str:
    """Where a DSN points (host:port/database), fit to log: never its user or password."""
    try:
        parts = urlsplit(dsn)
        host = parts.hostname or parse_qs(parts.query).get("host", ["localhost"])[0]
        return f"{host}:{parts.port or 5432}{parts.path or '/'}"
    except ValueError:
        return "postgres"
