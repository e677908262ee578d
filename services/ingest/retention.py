"""Forgets what ingest no longer needs (webhook ids, attempt records, failed-verification counts)
once past its time, in small chunks; every replica may run it."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import timedelta

import asyncpg

from services.ingest.database_calls import DATABASE_FAILURES
from services.ingest.verification_failures import FAILURE_RUN
from services.shared.logging import get_logger

_log = get_logger("poscal.ingest.retention")
_CHUNK = 5000

_PRUNE_DELIVERIES = """
DELETE FROM webhook_deliveries WHERE ctid = ANY(ARRAY(
    SELECT ctid FROM webhook_deliveries WHERE claimed_at < now() - $1::interval LIMIT $2))
"""
_PRUNE_ATTEMPTS = """
DELETE FROM webhook_attempts WHERE id = ANY(ARRAY(
    SELECT id FROM webhook_attempts WHERE received_at < now() - $1::interval LIMIT $2))
"""

# A row whose last failure is older than a run counts as no row at all (see
# verification_failures.py).
_PRUNE_FAILURES = """
DELETE FROM webhook_verification_failures WHERE ctid = ANY(ARRAY(
    SELECT ctid FROM webhook_verification_failures WHERE last_failure_at < now() - $1::interval
    LIMIT $2))
"""
# A gap says which attempts may be missing: once they would have been forgotten anyway, so is it.
_PRUNE_GAPS = """
DELETE FROM webhook_audit_gaps WHERE id = ANY(ARRAY(
    SELECT id FROM webhook_audit_gaps WHERE window_end < now() - $1::interval LIMIT $2))
"""
_PRUNE_INSTANCES = """
DELETE FROM ingest_instances WHERE instance_id = ANY(ARRAY(
    SELECT instance_id FROM ingest_instances
    WHERE state <> 'running' AND coalesce(stopped_at, lost_at) < now() - $1::interval LIMIT $2))
"""


class Retention:
    """Webhook ids after the replay window, attempt records (and the audit gaps and ended ingest
    instances that speak of them) after their retention, failed-verification counts once their
    run has ended. In small chunks, so no lock is held for long; every replica may run it
    (deleting the same rows twice is harmless)."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        replay_window: timedelta,
        attempt_retention: timedelta,
        every_seconds: float = 900,
    ) -> None:
        self._pool = pool
        self._replay_window = replay_window
        self._attempt_retention = attempt_retention
        self._every = every_seconds
        self._task: asyncio.Task[None] | None = None

    async def prune_once(self) -> int:
        """Delete everything past its time; returns how many rows went."""
        removed = 0
        for statement, age in (
            (_PRUNE_DELIVERIES, self._replay_window),
            (_PRUNE_ATTEMPTS, self._attempt_retention),
            (_PRUNE_FAILURES, FAILURE_RUN),
            (_PRUNE_GAPS, self._attempt_retention),
            (_PRUNE_INSTANCES, self._attempt_retention),
        ):
            while True:
                status = await self._pool.execute(statement, age, _CHUNK)
                count = int(status.split()[-1])
                removed += count
                if count < _CHUNK:
                    break
        return removed

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="retention")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._every)
            try:
                removed = await self.prune_once()
            except DATABASE_FAILURES as exc:
                _log.warning("retention pass failed; next pass retries", cause=type(exc).__name__)
                continue
            if removed:
                _log.info("expired webhook ids and attempt records removed", count=removed)
