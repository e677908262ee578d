"""How ingest calls Postgres on a request's path: bounded in time, and any failure to answer is
a TransientError (the sender gets a 503 and retries), never a 500."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import asyncpg

from services.shared.errors import TransientError

# What an unreachable or failing database raises: refused, reset, timed out, pool closed.
DATABASE_FAILURES = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)


@contextlib.asynccontextmanager
async def database_call(
    what: str,
    timeout_seconds: float,
    *,
    answers: tuple[type[asyncpg.PostgresError], ...] = (),
) -> AsyncIterator[None]:
    """Bounds waiting for a pooled connection too: a sender gets a 503 before it gives up.

    `answers` are errors that are the database's answer about the data rather than a failure
    to answer (say an integrity violation the caller handles): they pass through unwrapped.
    """
    try:
        async with asyncio.timeout(timeout_seconds):
            yield
    except answers:
        raise
    except DATABASE_FAILURES as exc:
        raise TransientError(f"{what} failed: {type(exc).__name__}") from exc
