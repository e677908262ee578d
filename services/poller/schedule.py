"""The sync schedule in Postgres: leasing due connections, saving cursors, recording outcomes.

Leases are taken with `FOR UPDATE SKIP LOCKED`, so replicas racing for due rows each get
different ones, and every later write names its owner: a replica whose lease ran out (and was
taken over) cannot move the cursor or the schedule any more.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import asyncpg

from services.shared import credential_kinds
from services.shared.envelope import ConnectionRef

_LEASE_DUE = """
WITH due AS (
    SELECT s.connection_id
    FROM sync_schedule s
    JOIN mt5_connections c ON c.id = s.connection_id
    WHERE s.next_sync_at <= now()
      AND (s.lease_until IS NULL OR s.lease_until < now())
      AND c.status IN ('active', 'error')
      AND (c.connection_type = 'demo' OR c.live_enabled_at IS NOT NULL)
      -- Refused credentials wait for new ones: no point asking the broker again.
      AND (s.credentials_rejected_at IS NULL OR EXISTS (
          SELECT 1 FROM mt5_credentials k
          WHERE k.connection_id = s.connection_id AND k.kind = $4 AND k.revoked_at IS NULL
            AND k.created_at > s.credentials_rejected_at))
    ORDER BY s.next_sync_at
    LIMIT $2
    FOR UPDATE OF s SKIP LOCKED
)
UPDATE sync_schedule s
SET lease_owner = $1, lease_until = now() + make_interval(secs => $3::float8),
    last_attempt_at = now(), updated_at = now()
FROM due, mt5_connections c
WHERE s.connection_id = due.connection_id AND c.id = s.connection_id
RETURNING s.connection_id, s.cursor, s.consecutive_failures, s.interval_seconds,
    c.user_id, c.account_id, c.broker, c.connection_type, c.account_number, c.server, c.api_url
"""

_SAVE_CURSOR = """
UPDATE sync_schedule
SET cursor = $3, lease_until = now() + make_interval(secs => $4::float8), updated_at = now()
WHERE connection_id = $1 AND lease_owner = $2
RETURNING connection_id
"""

_SUCCEEDED = """
WITH done AS (
    UPDATE sync_schedule
    SET consecutive_failures = 0, last_success_at = now(), last_error = NULL,
        credentials_rejected_at = NULL, lease_owner = NULL, lease_until = NULL,
        -- Staggered: +-10 % of the interval, so connections spread out instead of bunching.
        next_sync_at = now() + make_interval(secs => interval_seconds * (0.9 + 0.2 * $3::float8)),
        updated_at = now()
    WHERE connection_id = $1 AND lease_owner = $2
    RETURNING connection_id
)
UPDATE mt5_connections c
SET status = CASE WHEN c.status = 'error' THEN 'active' ELSE c.status END,
    last_error = CASE WHEN c.status = 'error' THEN NULL ELSE c.last_error END,
    updated_at = now()
FROM done WHERE c.id = done.connection_id
RETURNING c.id
"""

_FAILED = """
UPDATE sync_schedule
SET consecutive_failures = consecutive_failures + 1, last_error = $3, last_error_at = now(),
    next_sync_at = now() + make_interval(secs => $4::float8),
    lease_owner = NULL, lease_until = NULL, updated_at = now()
WHERE connection_id = $1 AND lease_owner = $2
RETURNING consecutive_failures
"""

_MARK_ERROR = """
UPDATE mt5_connections SET status = 'error', last_error = $2, updated_at = now()
WHERE id = $1 AND status = 'active'
RETURNING id
"""

_CREDENTIALS_REJECTED = """
UPDATE sync_schedule
SET credentials_rejected_at = now(), consecutive_failures = consecutive_failures + 1,
    last_error = $3, last_error_at = now(), lease_owner = NULL, lease_until = NULL,
    updated_at = now()
WHERE connection_id = $1 AND lease_owner = $2
RETURNING connection_id
"""

_MARK_CREDENTIALS_INVALID = """
UPDATE mt5_credentials SET rotation_forced_at = now(), rotation_forced_reason = $3
WHERE connection_id = $1 AND kind = $2 AND revoked_at IS NULL AND rotation_forced_at IS NULL
"""

_AUDIT_FAILURE = """
UPDATE mt5_security_audit SET last_failure_at = now(), updated_at = now()
WHERE connection_id = $1
"""

_POSTPONE = """
UPDATE sync_schedule
SET next_sync_at = now() + make_interval(secs => $3::float8),
    lease_owner = NULL, lease_until = NULL, updated_at = now()
WHERE connection_id = $1 AND lease_owner = $2
"""

_SCHEDULE = """
INSERT INTO sync_schedule (connection_id, user_id, interval_seconds, next_sync_at)
SELECT id, user_id, $2::integer, now() + make_interval(secs => $2::integer * $3::float8)
FROM mt5_connections WHERE id = $1
ON CONFLICT (connection_id) DO NOTHING
"""


class LeaseLost(Exception):
    """Another replica holds this connection now: stop without writing anything."""


@dataclass(frozen=True)
class DueSync:
    connection: ConnectionRef
    cursor: str | None
    consecutive_failures: int
    api_url: str | None


async def schedule_connection(
    conn: asyncpg.Connection | asyncpg.pool.PoolConnectionProxy,
    connection_id: uuid.UUID,
    interval_seconds: int = 60,
    spread: float = 0.0,
) -> None:
    """Put a polled connection on the schedule: first sync within `spread` of an interval."""
    await conn.execute(_SCHEDULE, connection_id, interval_seconds, spread)


class SyncSchedule:
    def __init__(self, pool: asyncpg.Pool, owner: str, lease_seconds: float) -> None:
        self._pool = pool
        self._owner = owner
        self._lease = lease_seconds

    async def lease_due(self, limit: int) -> list[DueSync]:
        rows = await self._pool.fetch(
            _LEASE_DUE, self._owner, limit, self._lease, credential_kinds.BROKER_CREDENTIALS
        )
        return [
            DueSync(
                connection=ConnectionRef(
                    connection_id=r["connection_id"],
                    user_id=r["user_id"],
                    account_id=r["account_id"],
                    broker=r["broker"],
                    connection_type=r["connection_type"],
                    account_number=r["account_number"],
                    server=r["server"] or None,
                ),
                cursor=r["cursor"],
                consecutive_failures=r["consecutive_failures"],
                api_url=r["api_url"],
            )
            for r in rows
        ]

    async def save_cursor(self, connection_id: uuid.UUID, cursor: str) -> None:
        """Advance the cursor (and renew the lease); LeaseLost if it is no longer ours."""
        saved = await self._pool.fetchval(
            _SAVE_CURSOR, connection_id, self._owner, cursor, self._lease
        )
        if saved is None:
            raise LeaseLost(str(connection_id))

    async def succeeded(self, connection_id: uuid.UUID, jitter: float) -> None:
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.fetchval(_SUCCEEDED, connection_id, self._owner, jitter)

    async def failed(
        self, connection_id: uuid.UUID, reason: str, retry_in_seconds: float, error_after: int
    ) -> tuple[int, bool]:
        """Count a failure; (failures in a row, whether this one turned the connection to error)."""
        async with self._pool.acquire() as conn, conn.transaction():
            failures = await conn.fetchval(
                _FAILED, connection_id, self._owner, reason, retry_in_seconds
            )
            if failures is None:
                raise LeaseLost(str(connection_id))
            turned = False
            if failures > error_after:
                turned = await conn.fetchval(_MARK_ERROR, connection_id, reason) is not None
            await conn.execute(_AUDIT_FAILURE, connection_id)
        return failures, turned

    async def credentials_rejected(self, connection_id: uuid.UUID, reason: str) -> bool:
        """Stop syncing until new credentials are stored; True if it turned to error now."""
        async with self._pool.acquire() as conn, conn.transaction():
            if (
                await conn.fetchval(_CREDENTIALS_REJECTED, connection_id, self._owner, reason)
                is None
            ):
                raise LeaseLost(str(connection_id))
            await conn.execute(
                _MARK_CREDENTIALS_INVALID,
                connection_id,
                credential_kinds.BROKER_CREDENTIALS,
                "rejected_by_broker",
            )
            await conn.execute(_AUDIT_FAILURE, connection_id)
            turned = await conn.fetchval(_MARK_ERROR, connection_id, reason) is not None
        return turned

    async def postpone(self, connection_id: uuid.UUID, seconds: float) -> None:
        """Give the lease back without a verdict (a rate limit, a shutdown)."""
        await self._pool.execute(_POSTPONE, connection_id, self._owner, seconds)
