"""Lockout: consecutive failed verifications are counted per connection as they happen (in
Postgres, so every replica counts into one number); reaching the threshold locks the connection
until its secret is rotated, marks its credentials for forced rotation, and raises an alert."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import asyncpg

from services.ingest.audit import Attempt, printable
from services.ingest.database_calls import database_call
from services.ingest.metrics import LOCKOUTS
from services.shared.logging import get_logger

_log = get_logger("poscal.ingest.lockout")

_COUNT_FAILURE = """
INSERT INTO mt5_security_audit AS a (connection_id, user_id, last_failure_at, last_ip,
    last_user_agent, consecutive_failures)
VALUES ($1, $2, $3, $4, $5, 1)
ON CONFLICT (connection_id) DO UPDATE SET
    consecutive_failures = a.consecutive_failures + 1,
    last_failure_at = greatest(a.last_failure_at, EXCLUDED.last_failure_at),
    last_ip = EXCLUDED.last_ip,
    last_user_agent = EXCLUDED.last_user_agent,
    updated_at = now()
RETURNING consecutive_failures
"""

_LOCK = """
UPDATE mt5_connections SET status = 'locked', locked_at = $2, last_error = $3, updated_at = now()
WHERE id = $1 AND status IN ('active', 'error')
RETURNING id
"""

_FORCE_ROTATION = """
UPDATE mt5_credentials SET rotation_forced_at = $2, rotation_forced_reason = $3
WHERE connection_id = $1 AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > $2)
    AND rotation_forced_at IS NULL
"""


class Lockout:
    def __init__(
        self,
        pool: asyncpg.Pool,
        threshold: int,
        on_locked: Callable[[uuid.UUID], None],
        timeout_seconds: float = 5.0,
    ) -> None:
        self._pool = pool
        self._threshold = threshold
        self._on_locked = on_locked
        self._timeout = timeout_seconds

    async def count_failure(self, attempt: Attempt) -> bool:
        """Count a failed verification of a known connection; True if it locked the connection.

        Raises TransientError if the database cannot answer.
        """
        assert attempt.connection_id is not None and attempt.user_id is not None
        reason = (
            f"locked after {self._threshold} consecutive failed webhook verifications;"
            " rotate the webhook secret to unlock"
        )
        async with (
            database_call("counting a failed verification", self._timeout),
            self._pool.acquire() as conn,
            conn.transaction(),
        ):
            failures: int = await conn.fetchval(
                _COUNT_FAILURE,
                attempt.connection_id,
                attempt.user_id,
                attempt.received_at,
                attempt.client_ip,
                printable(attempt.user_agent),
            )
            if failures < self._threshold:
                return False
            locked = await conn.fetchval(_LOCK, attempt.connection_id, attempt.received_at, reason)
            if locked is None:
                return False  # already locked (by another replica, or paused meanwhile)
            await conn.execute(
                _FORCE_ROTATION, attempt.connection_id, attempt.received_at, "lockout"
            )
        self._alert(attempt, failures)
        return True

    def _alert(self, attempt: Attempt, failures: int) -> None:
        LOCKOUTS.inc()
        assert attempt.connection_id is not None
        self._on_locked(attempt.connection_id)
        _log.error(
            "ALERT connection locked after repeated failed webhook verifications",
            alert="webhook_lockout",
            connection_id=str(attempt.connection_id),
            user_id=str(attempt.user_id),
            consecutive_failures=failures,
            client_ip=attempt.client_ip,
            last_reason=attempt.reason,
        )
