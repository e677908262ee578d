"""The gauges the poller reads from Postgres on a timer: where the schedule stands, credentials
whose rotation is needed, data keys still under an old key-encryption key."""

from __future__ import annotations

import asyncio
import contextlib
import time

import asyncpg
from prometheus_client import Gauge

from services.poller.metrics import (
    CONNECTIONS_DUE,
    CONNECTIONS_FAILING,
    CONNECTIONS_LEASED,
    CREDENTIALS_NEEDING_ROTATION,
    DATA_KEYS_NOT_CURRENT,
    GAUGES_READ_AT,
    MAX_CONSECUTIVE_FAILURES,
)
from services.poller.schedule import SyncSchedule
from services.shared import credential_kinds
from services.shared.connection_admin.rotation import DUE_AFTER, WARN_AFTER
from services.shared.logging import get_logger

_log = get_logger("poscal.poller")

# Per connection and kind, its newest active credential, as `connections list --rotation-due`
# classifies it (connection_admin/rotation.py): forced by a mark on any active credential of
# the kind, else due or warning by age. Wizard sessions' credentials are no connection's.
_ROTATION_NEEDED = """
WITH per_kind AS (
    SELECT k.connection_id, k.kind, max(k.last_rotated_at) AS rotated,
           bool_or(k.rotation_forced_at IS NOT NULL) AS forced
    FROM mt5_credentials k JOIN mt5_connections c ON c.id = k.connection_id
    WHERE c.lifecycle <> 'revoked' AND k.revoked_at IS NULL
      AND (k.expires_at IS NULL OR k.expires_at > now())
    GROUP BY k.connection_id, k.kind
),
classified AS (
    SELECT kind, CASE
        WHEN forced THEN 'forced'
        WHEN rotated < now() - $1::interval THEN 'due'
        WHEN rotated < now() - $2::interval THEN 'warning'
    END AS state
    FROM per_kind
)
SELECT kind, state, count(*) AS n FROM classified WHERE state IS NOT NULL GROUP BY kind, state
"""

_DATA_KEYS_NOT_CURRENT = "SELECT count(*) FROM user_data_keys WHERE kek_id <> $1"

ROTATION_STATES = ("warning", "due", "forced")
CONNECTION_KINDS = (
    credential_kinds.WEBHOOK_SECRET,
    credential_kinds.WEBHOOK_PUBLIC_KEY,
    credential_kinds.BROKER_CREDENTIALS,
)


class PollerGauges:
    """Reads the gauges' values from Postgres; `run` does so every `every_seconds` until stopped.
    A broker no longer present loses its series; every kind and state of rotation is always
    exported (0 when none), so a rule sees "none" rather than nothing."""

    def __init__(
        self, pool: asyncpg.Pool, schedule: SyncSchedule, current_kek_id: str, every_seconds: float
    ) -> None:
        self._pool = pool
        self._schedule = schedule
        self._kek_id = current_kek_id
        self._every = every_seconds
        self._brokers: set[str] = set()

    async def read(self) -> None:
        standing = await self._schedule.standing()
        async with self._pool.acquire() as conn:
            rotation = await conn.fetch(_ROTATION_NEEDED, DUE_AFTER, WARN_AFTER)
            not_current = await conn.fetchval(_DATA_KEYS_NOT_CURRENT, self._kek_id)
        brokers = {s.broker for s in standing}
        for gone in self._brokers - brokers:
            for gauge in _BY_BROKER:
                gauge.remove(gone)
        self._brokers = brokers
        for s in standing:
            CONNECTIONS_DUE.labels(s.broker).set(s.due)
            CONNECTIONS_LEASED.labels(s.broker).set(s.leased)
            CONNECTIONS_FAILING.labels(s.broker).set(s.failing)
            MAX_CONSECUTIVE_FAILURES.labels(s.broker).set(s.max_consecutive_failures)
        needed = {(kind, state): 0 for kind in CONNECTION_KINDS for state in ROTATION_STATES}
        needed |= {(r["kind"], r["state"]): r["n"] for r in rotation}
        for (kind, state), count in needed.items():
            CREDENTIALS_NEEDING_ROTATION.labels(kind, state).set(count)
        DATA_KEYS_NOT_CURRENT.set(not_current)
        GAUGES_READ_AT.set(time.time())

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.read()
            except Exception as exc:  # the database is away: the gauges keep their values
                _log.warning("cannot read the poller's gauges", cause=type(exc).__name__)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self._every)


_BY_BROKER: tuple[Gauge, ...] = (
    CONNECTIONS_DUE,
    CONNECTIONS_LEASED,
    CONNECTIONS_FAILING,
    MAX_CONSECUTIVE_FAILURES,
)
