"""This ingest process in `ingest_instances`, and the audit gap recorded for each instance that
died without recording all its attempts."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from services.ingest.database_calls import DATABASE_FAILURES
from services.ingest.metrics import AUDIT_GAPS
from services.shared.backoff import Backoff
from services.shared.logging import get_logger

_log = get_logger("poscal.ingest.instances")
# The first key of every ingest instance's two-key advisory lock ("ings"); the second is its
# lock_key. Two-key locks never collide with one-key ones (the migrator's).
LOCK_NAMESPACE = 0x696E6773
# Lets Postgres notice a vanished host (no FIN ever comes) and release its lock.
_KEEPALIVES = {
    "tcp_keepalives_idle": "10",
    "tcp_keepalives_interval": "5",
    "tcp_keepalives_count": "3",
    "application_name": "poscal-ingest-instance",
}

_REGISTER = """
INSERT INTO public.ingest_instances (instance_id, host, pid) VALUES ($1, $2, $3)
RETURNING lock_key
"""

# Whoever gets an instance's lock in passing proves its session is gone. Two checkers racing
# for one instance: the second finds the lock held by the first (or the row no longer
# `running`), so each death is recorded once.
_FIND_LOST = """
WITH lost AS (
    UPDATE public.ingest_instances AS i SET state = 'lost', lost_at = now()
    WHERE i.state = 'running' AND i.instance_id <> $1
      AND pg_try_advisory_xact_lock($2, i.lock_key)
    RETURNING i.instance_id, i.flushed_through
)
INSERT INTO public.webhook_audit_gaps (instance_id, reason, window_start, window_end, detected_by)
SELECT instance_id, 'instance_lost', flushed_through, greatest(now(), flushed_through), $1
FROM lost
RETURNING instance_id, window_start, window_end
"""

_RESUME = """
WITH resumed AS (
    UPDATE public.ingest_instances SET state = 'running', lost_at = NULL
    WHERE instance_id = $1 AND state = 'lost'
    RETURNING instance_id
)
UPDATE public.webhook_audit_gaps AS g SET resolved_at = now(), resolution = 'instance_resumed'
FROM resumed
WHERE g.instance_id = resumed.instance_id AND g.reason = 'instance_lost'
  AND g.resolved_at IS NULL
"""

_STOPPED = """
UPDATE public.ingest_instances SET state = 'stopped', stopped_at = now()
WHERE instance_id = $1 AND state = 'running'
"""


@dataclass(frozen=True)
class AuditGap:
    instance_id: uuid.UUID
    window_start: datetime
    window_end: datetime


class IngestInstance:
    """This process's row: registered at start, alive for as long as its own session holds its
    advisory lock, `stopped` after a clean stop. Any replica finds instances that died otherwise
    (at its start, then periodically) and records an audit gap for each.

    A process killed outright closes its sockets, so Postgres releases its lock at once; a host
    that vanishes is noticed through TCP keepalives on that session (about half a minute). The
    lock needs a session of its own: behind a transaction-mode pooler it would not hold."""

    def __init__(
        self,
        dsn: str,
        pool: asyncpg.Pool,
        *,
        check_every_seconds: float = 30.0,
        instance_id: uuid.UUID | None = None,
    ) -> None:
        self.instance_id = instance_id or uuid.uuid4()
        self._dsn = dsn
        self._pool = pool
        self._every = check_every_seconds
        self._session: asyncpg.Connection | None = None
        self._lock_key: int | None = None
        self._session_lost = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def register(self) -> None:
        """Insert this instance and take its lock in one transaction: no checker can ever see
        it `running` and unlocked."""
        session = await self._connect()
        try:
            async with session.transaction():
                self._lock_key = await session.fetchval(
                    _REGISTER, self.instance_id, socket.gethostname(), os.getpid()
                )
                await session.execute(
                    "SELECT pg_advisory_lock($1, $2)", LOCK_NAMESPACE, self._lock_key
                )
        except BaseException:
            await _close(session)
            raise
        self._hold(session)
        _log.info("ingest instance registered", instance_id=str(self.instance_id))

    def start(self) -> None:
        """Watch this instance's lock session and check for dead instances, now and then."""
        self._task = asyncio.create_task(self._run(), name="ingest-instance")

    async def stop(self, *, clean: bool) -> None:
        """`clean`: every attempt this instance answered is recorded (or a gap says what is
        not). Otherwise it stays `running` and the next check records the gap."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if clean and self._lock_key is not None:
            # Through the pool: the lock session itself may be the one that was lost.
            with contextlib.suppress(*DATABASE_FAILURES):
                async with asyncio.timeout(5):
                    await self._pool.execute(_STOPPED, self.instance_id)
        session, self._session = self._session, None
        if session is not None:
            await _close(session)

    async def find_lost(self) -> list[AuditGap]:
        """Mark every instance that died uncleanly `lost`, each with its audit gap."""
        rows = await self._pool.fetch(_FIND_LOST, self.instance_id, LOCK_NAMESPACE)
        gaps = [AuditGap(r["instance_id"], r["window_start"], r["window_end"]) for r in rows]
        for gap in gaps:
            AUDIT_GAPS.labels("instance_lost").inc()
            _log.error(
                "an ingest instance died without recording all its attempts",
                alert="audit_gap",
                lost_instance_id=str(gap.instance_id),
                window_start=gap.window_start.isoformat(),
                window_end=gap.window_end.isoformat(),
            )
        return gaps

    async def _connect(self) -> asyncpg.Connection:
        session: asyncpg.Connection = await asyncpg.connect(
            self._dsn, timeout=10, server_settings=_KEEPALIVES
        )
        return session

    def _hold(self, session: asyncpg.Connection) -> None:
        self._session_lost.clear()
        session.add_termination_listener(self._lost_session)
        self._session = session

    def _lost_session(self, _: Any) -> None:
        self._session_lost.set()

    async def _run(self) -> None:
        await self._check()
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._session_lost.wait(), self._every)
            if self._session_lost.is_set():
                await self._resume()
            await self._check()

    async def _check(self) -> None:
        try:
            await self.find_lost()
        except DATABASE_FAILURES as exc:
            _log.warning("cannot check for lost ingest instances", cause=type(exc).__name__)

    async def _resume(self) -> None:
        """Take the lock again on a new session. Another replica may have found this instance
        lost meanwhile: it was alive and its queue intact, so that gap is resolved."""
        _log.warning("ingest instance lock session lost; reconnecting")
        lost, self._session = self._session, None
        if lost is not None:
            await _close(lost)
        backoff = Backoff(base_seconds=0.25, cap_seconds=10)
        while True:
            try:
                session = await self._connect()
                try:
                    await session.execute(
                        "SELECT pg_advisory_lock($1, $2)", LOCK_NAMESPACE, self._lock_key
                    )
                    await session.execute(_RESUME, self.instance_id)
                except BaseException:
                    await _close(session)
                    raise
            except DATABASE_FAILURES as exc:
                _log.warning("cannot reclaim the instance lock", cause=type(exc).__name__)
                await asyncio.sleep(backoff.next_delay())
                continue
            self._hold(session)
            _log.info("ingest instance lock reclaimed", instance_id=str(self.instance_id))
            return


async def _close(session: asyncpg.Connection) -> None:
    if session.is_closed():
        return
    try:
        async with asyncio.timeout(2):
            await session.close()
    except DATABASE_FAILURES:
        session.terminate()
    except asyncio.CancelledError:
        session.terminate()
        raise
