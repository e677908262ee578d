"""Every query a request makes runs as its signed-in user, so row-level security decides what it
sees (`as_user`); the few privileged steps run as the service, for a connection the user owns
(`as_service_for`)."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import Literal

import asyncpg

from services.api.errors import NotFound
from services.api.tokens import Caller
from services.shared.database import Connection
from services.shared.probes import postgres_answers

# Supabase's API does the same per request (PostgREST): the role and the verified claims, for
# this transaction only (set_config(..., true) is SET LOCAL), so nothing outlives the request on
# a pooled connection. `auth.uid()` reads `request.jwt.claim.sub`, else the claims' `sub`.
_BECOME_USER = """
SELECT set_config('role', 'authenticated', true),
       set_config('request.jwt.claims', $1, true),
       set_config('request.jwt.claim.sub', $2, true),
       set_config('statement_timeout', $3, true)
"""
# The ownership check of a privileged step: as the user, so the same row-level security that
# decides what they read decides what they may act on.
_OWNS_CONNECTION = "SELECT EXISTS (SELECT 1 FROM mt5_connections WHERE id = $1)"
# Then as the service, the row locked until the step commits: it cannot be deleted or change
# hands under the step, and the user id is stated again rather than trusted to the role switch.
_BECOME_SERVICE = "SELECT set_config('role', 'service_role', true)"
_LOCK_OWNED = "SELECT 1 FROM mt5_connections WHERE id = $1 AND user_id = $2 FOR UPDATE"
# A wizard session the user can read, and that has not expired.
_OWNS_SESSION = "SELECT EXISTS (SELECT 1 FROM wizard_sessions WHERE id = $1 AND expires_at > now())"


class Database:
    """The API's pool, used only through these two doors.

    The login role needs membership in `authenticated` (and in `service_role` for privileged
    steps) and nothing else: connected as a NOINHERIT role holding no table privileges, a query
    that goes around them reads nothing (README.md, "The app API", has the GRANTs)."""

    def __init__(self, pool: asyncpg.Pool, statement_timeout_ms: int = 5000) -> None:
        self._pool = pool
        self._statement_timeout = f"{statement_timeout_ms}ms"

    @contextlib.asynccontextmanager
    async def as_user(
        self, caller: Caller, *, one_snapshot: bool = False
    ) -> AsyncIterator[Connection]:
        """One transaction as `caller`: role `authenticated` with the token's claims. Whatever
        is queried here, row-level security shows only the caller's rows. `one_snapshot`: every
        statement sees the database as the first one did (repeatable read, read only)."""
        isolation: Literal["repeatable_read"] | None = "repeatable_read" if one_snapshot else None
        async with (
            self._pool.acquire() as conn,
            conn.transaction(isolation=isolation, readonly=one_snapshot),
        ):
            await self._become(conn, caller)
            yield conn

    @contextlib.asynccontextmanager
    async def as_service_for(
        self, caller: Caller, connection_id: uuid.UUID
    ) -> AsyncIterator[Connection]:
        """One transaction as `service_role` for a privileged step on `caller`'s connection.
        Ownership is checked first, in the same transaction: another user's connection and one
        that does not exist are the same NotFound, raised before anything privileged runs."""
        async with self._pool.acquire() as conn, conn.transaction():
            await self._become(conn, caller)
            if not await conn.fetchval(_OWNS_CONNECTION, connection_id):
                raise NotFound()
            await conn.execute(_BECOME_SERVICE)
            if await conn.fetchval(_LOCK_OWNED, connection_id, caller.user_id) is None:
                raise NotFound()
            yield conn

    @contextlib.asynccontextmanager
    async def as_service_for_self(self, caller: Caller) -> AsyncIterator[Connection]:
        """One transaction as `service_role` for a privileged step on `caller`'s own behalf that
        starts from no row of theirs (opening a wizard session): the step names
        `caller.user_id` in every statement it makes."""
        async with self._pool.acquire() as conn, conn.transaction():
            await self._become(conn, caller)
            await conn.execute(_BECOME_SERVICE)
            yield conn

    @contextlib.asynccontextmanager
    async def as_service_for_session(
        self, caller: Caller, session_id: uuid.UUID
    ) -> AsyncIterator[Connection]:
        """As `as_service_for`, for one of `caller`'s wizard sessions: another user's, an
        expired one and one that does not exist are the same NotFound, raised first."""
        async with self._pool.acquire() as conn, conn.transaction():
            await self._become(conn, caller)
            if not await conn.fetchval(_OWNS_SESSION, session_id):
                raise NotFound()
            await conn.execute(_BECOME_SERVICE)
            yield conn

    @contextlib.asynccontextmanager
    async def as_service(self) -> AsyncIterator[Connection]:
        """One transaction as `service_role` for the API's own upkeep, asked by no user
        (removing expired wizard sessions): never for anything a request asks."""
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute(_BECOME_SERVICE)
            await conn.execute(
                "SELECT set_config('statement_timeout', $1, true)", self._statement_timeout
            )
            yield conn

    async def answers(self) -> bool:
        return await postgres_answers(self._pool)

    async def _become(self, conn: Connection, caller: Caller) -> None:
        await conn.execute(
            _BECOME_USER, caller.claims_json, str(caller.user_id), self._statement_timeout
        )
