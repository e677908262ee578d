"""Keeps the connection cache honest: LISTENs for `poscal_connection_changed` (sent by triggers
when what ingest caches of a connection changes) and forgets that connection at once."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from typing import Any

import asyncpg

from services.ingest.connections import ConnectionDirectory
from services.ingest.database_calls import DATABASE_FAILURES
from services.shared.backoff import Backoff
from services.shared.logging import get_logger

CHANNEL = "poscal_connection_changed"
_log = get_logger("poscal.ingest.cache")


class ConnectionChangeListener:
    """While the listening connection is down, notifications may be missed, so the cache is not
    trusted (every lookup reads Postgres) until it is back and the cache has been emptied."""

    def __init__(self, dsn: str, directory: ConnectionDirectory) -> None:
        self._dsn = dsn
        self._directory = directory
        self._task: asyncio.Task[None] | None = None
        self._lost = asyncio.Event()

    @property
    def listening(self) -> bool:
        """Whether changes are being heard now (so the cache is trusted)."""
        return self._directory.trust_cache

    def _changed(self, _conn: Any, _pid: int, _channel: str, payload: object) -> None:
        try:
            self._directory.forget(uuid.UUID(str(payload)))
        except ValueError:
            self._directory.forget_all()

    def _connection_lost(self, _conn: Any) -> None:
        self._directory.trust_cache = False
        self._lost.set()

    async def start(self) -> None:
        self._directory.trust_cache = False
        self._task = asyncio.create_task(self._run(), name="connection-change-listener")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        # Jittered: after a Postgres restart, every replica's listener must not knock at once.
        backoff = Backoff(base_seconds=0.5, cap_seconds=10.0)
        while True:
            conn: asyncpg.Connection | None = None
            try:
                conn = await asyncpg.connect(self._dsn, timeout=5)
                self._lost.clear()
                conn.add_termination_listener(self._connection_lost)
                await conn.add_listener(CHANNEL, self._changed)
                self._directory.forget_all()
                self._directory.trust_cache = True
                backoff.reset()
                await self._lost.wait()
                _log.warning("connection change notifications lost; reconnecting")
            except DATABASE_FAILURES as exc:
                _log.warning("cannot listen for connection changes", cause=type(exc).__name__)
                await asyncio.sleep(backoff.next_delay())
            finally:
                self._directory.trust_cache = False
                if conn is not None and not conn.is_closed():
                    with contextlib.suppress(*DATABASE_FAILURES):
                        await asyncio.wait_for(conn.close(), 2)
