"""The sync schedule in Postgres: leasing due connections, saving cursors, recording outcomes."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import asyncpg

from services.shared import credential_kinds
from services.shared.brokers.polling import CloudTerminal
from services.shared.envelope import ConnectionRef
from services.shared.sync_limits import UserSyncLimit

# Leasing is serialized across replicas (one short transaction per tick each) so that the
# per-user count below sees every lease another replica has just taken: without it, two
# replicas reading at once would each grant the same user's last free sync.
_LEASE_LOCK = "SELECT pg_advisory_xact_lock(hashtext('poscal.poller.lease_due'))"


def _leasable(credential_kind: str) -> str:
    """The condition on a schedule row `s` and its connection `c` for the poller to lease it
    once due; `credential_kind` is the placeholder of the broker credentials' kind."""
    return f"""c.lifecycle IN ('active', 'locked')
      -- 'locked' is an operator's `connections lock` of the webhooks (a suspect webhook
      -- secret); polling uses the broker's API credentials, so it goes on.
      AND (c.connection_type = 'demo' OR c.live_enabled_at IS NOT NULL)
      -- Polled through a cloud terminal (0014): only once provisioning found it ready, and
      -- never while the connection is being deleted (its terminal is being removed).
      AND NOT EXISTS (
          SELECT 1 FROM cloud_terminals t
          WHERE t.connection_id = s.connection_id
            AND (t.ready_at IS NULL OR t.removing_at IS NOT NULL))
      -- Only with an active credential the broker has not refused: with none stored yet the
      -- connection waits for credentials, and a refused one waits for another (no point asking
      -- the broker again). Which one was refused, not when: a credential stored while a poll
      -- was being refused readmits the connection whenever either transaction commits.
      AND EXISTS (
          SELECT 1 FROM mt5_credentials k
          WHERE k.connection_id = s.connection_id AND k.kind = {credential_kind}
            AND k.revoked_at IS NULL AND (k.expires_at IS NULL OR k.expires_at > now())
            AND k.id IS DISTINCT FROM s.rejected_credential_id)"""  # noqa: S608 - a placeholder


# A user's connections are not leased while that user already had `$6` syncs attempted within
# the last `$7` seconds (counted as the user's connections attempted in that window: each
# connection counts once, and its own interval keeps it from syncing more often).
_LEASE_DUE = f"""
WITH candidates AS (
    SELECT s.connection_id, s.user_id, s.next_sync_at,
           row_number() OVER (PARTITION BY s.user_id ORDER BY s.next_sync_at, s.connection_id)
               AS turn
    FROM sync_schedule s
    JOIN mt5_connections c ON c.id = s.connection_id
    WHERE s.next_sync_at <= now()
      AND (s.lease_until IS NULL OR s.lease_until < now())
      AND NOT s.connection_id = ANY($5::uuid[])
      AND {_leasable("$4")}
),
recent AS (
    SELECT s.user_id, count(*) AS attempts
    FROM sync_schedule s
    WHERE s.user_id IN (SELECT user_id FROM candidates)
      AND s.last_attempt_at > now() - make_interval(secs => $7::float8)
    GROUP BY s.user_id
),
allowed AS (
    SELECT candidates.connection_id
    FROM candidates LEFT JOIN recent ON recent.user_id = candidates.user_id
    WHERE $6::integer IS NULL OR candidates.turn <= $6::integer - coalesce(recent.attempts, 0)
    ORDER BY candidates.next_sync_at
    LIMIT $2
),
due AS (
    SELECT s.connection_id
    FROM sync_schedule s
    WHERE s.connection_id IN (SELECT connection_id FROM allowed)
      AND s.next_sync_at <= now()
      AND (s.lease_until IS NULL OR s.lease_until < now())
    FOR UPDATE OF s SKIP LOCKED
),
leased AS (
    UPDATE sync_schedule s
    SET lease_owner = $1, lease_token = gen_random_uuid(),
        lease_until = now() + make_interval(secs => $3::float8),
        last_attempt_at = now(), updated_at = now()
    FROM due
    WHERE s.connection_id = due.connection_id
    RETURNING s.connection_id, s.lease_token, s.cursor, s.consecutive_failures,
        s.last_error IS NOT NULL AS had_error
)
-- The sync state the app shows: syncing, unless its syncs keep failing (error until one works).
UPDATE mt5_connections c
SET status = CASE WHEN c.status = 'error' THEN 'error' ELSE 'syncing' END
FROM leased
LEFT JOIN cloud_terminals t ON t.connection_id = leased.connection_id
WHERE c.id = leased.connection_id
RETURNING leased.*,
    c.user_id, c.account_id, c.broker, c.connection_type, c.account_number, c.server, c.api_url,
    t.provider AS terminal_provider, t.remote_account_id AS terminal_account_id,
    t.region AS terminal_region
"""  # noqa: S608 - our own SQL fragment, no input

_RENEW = """
UPDATE sync_schedule
SET lease_until = now() + make_interval(secs => $3::float8), updated_at = now()
WHERE connection_id = $1 AND lease_token = $2
RETURNING connection_id
"""

# A digit-string cursor never moves back (a transaction id); any other form is the adapter's
# own and is taken as given.
_SAVE_CURSOR = """
UPDATE sync_schedule
SET cursor = CASE
        WHEN cursor ~ '^[0-9]+$' AND $3::text ~ '^[0-9]+$'
             AND $3::text::numeric < cursor::numeric THEN cursor
        ELSE $3::text
    END,
    lease_until = now() + make_interval(secs => $4::float8), updated_at = now()
WHERE connection_id = $1 AND lease_token = $2
RETURNING cursor
"""

_SUCCEEDED = """
WITH done AS (
    UPDATE sync_schedule
    SET consecutive_failures = 0, last_success_at = now(), last_error = NULL,
        credentials_rejected_at = NULL, rejected_credential_id = NULL, lease_owner = NULL,
        lease_until = NULL, lease_token = NULL,
        -- Staggered: +-10 % of the interval, so connections spread out instead of bunching.
        next_sync_at = now() + make_interval(secs => interval_seconds * (0.9 + 0.2 * $3::float8)),
        updated_at = now()
    WHERE connection_id = $1 AND lease_token = $2
    RETURNING connection_id
)
UPDATE mt5_connections c
SET status = 'idle',
    -- A locked connection's last error says why it is locked.
    last_error = CASE WHEN c.lifecycle = 'locked' THEN c.last_error END
FROM done WHERE c.id = done.connection_id
RETURNING c.id
"""

_FAILED = """
UPDATE sync_schedule
SET consecutive_failures = consecutive_failures + 1, last_error = $3, last_error_at = now(),
    next_sync_at = now() + make_interval(secs => $4::float8),
    lease_owner = NULL, lease_until = NULL, lease_token = NULL, updated_at = now()
WHERE connection_id = $1 AND lease_token = $2
RETURNING consecutive_failures
"""

_MARK_ERROR = """
UPDATE mt5_connections
SET status = 'error', last_error = CASE WHEN lifecycle = 'locked' THEN last_error ELSE $2 END
WHERE id = $1 AND status <> 'error'
RETURNING id
"""

# A sync that ended without a verdict on the connection (a failure below the threshold, a
# request to wait, a postponement): idle again, or still in error.
_SYNC_ENDED = """
UPDATE mt5_connections SET status = 'idle' WHERE id = $1 AND status = 'syncing'
"""

_CREDENTIALS_REJECTED = """
UPDATE sync_schedule
SET credentials_rejected_at = now(), rejected_credential_id = $3,
    consecutive_failures = consecutive_failures + 1, last_error = $4, last_error_at = now(),
    lease_owner = NULL, lease_until = NULL, lease_token = NULL, updated_at = now()
WHERE connection_id = $1 AND lease_token = $2
RETURNING connection_id
"""

# The refused credential only: one stored meanwhile was never tried.
_MARK_CREDENTIAL_INVALID = """
UPDATE mt5_credentials SET rotation_forced_at = now(), rotation_forced_reason = $2
WHERE id = $1 AND revoked_at IS NULL AND rotation_forced_at IS NULL
"""

_AUDIT_FAILURE = """
UPDATE mt5_security_audit SET last_failure_at = now(), updated_at = now()
WHERE connection_id = $1
"""

_TOLD_TO_WAIT = """
UPDATE sync_schedule
SET next_sync_at = now() + make_interval(secs => $3::float8),
    last_error = $4, last_error_at = now(),
    lease_owner = NULL, lease_until = NULL, lease_token = NULL, updated_at = now()
WHERE connection_id = $1 AND lease_token = $2
RETURNING connection_id
"""

# Where the schedule stands, per broker, for the poller's gauges.
_STANDING = f"""
SELECT c.broker,
    count(*) FILTER (
        WHERE s.next_sync_at <= now() AND (s.lease_until IS NULL OR s.lease_until < now())
          AND {_leasable("$1")}) AS due,
    count(*) FILTER (WHERE s.lease_until >= now()) AS leased,
    count(*) FILTER (WHERE s.consecutive_failures > 0) AS failing,
    coalesce(max(s.consecutive_failures), 0) AS max_consecutive_failures
FROM sync_schedule s JOIN mt5_connections c ON c.id = s.connection_id
WHERE c.lifecycle <> 'revoked'
GROUP BY c.broker
"""  # noqa: S608 - our own SQL fragment, no input

_POSTPONE = """
UPDATE sync_schedule
SET next_sync_at = now() + make_interval(secs => $3::float8),
    lease_owner = NULL, lease_until = NULL, lease_token = NULL, updated_at = now()
WHERE connection_id = $1 AND lease_token = $2
RETURNING connection_id
"""


class LeaseLost(Exception):
    """Another lease holds this connection now: stop without writing anything."""


@dataclass(frozen=True)
class BrokerStanding:
    """How one broker's polled connections stand now (the poller's gauges)."""

    broker: str
    due: int
    leased: int
    failing: int
    max_consecutive_failures: int


@dataclass(frozen=True)
class Lease:
    """One lease of one connection: only its holder may write the connection's schedule.

    Every lease gets a fresh `lease_token`, and every later write names it: a replica whose
    lease ran out and was taken over (even by itself) can no longer move the cursor or the
    schedule. `lease_owner` only says who holds the lease, for people looking at the table."""

    connection_id: uuid.UUID
    token: uuid.UUID


@dataclass(frozen=True)
class DueSync:
    connection: ConnectionRef
    lease_token: uuid.UUID
    cursor: str | None
    consecutive_failures: int
    api_url: str | None
    # The previous attempt ended in a failure or a request to wait (see `told_to_wait`).
    had_error: bool = False
    # The cloud terminal it is polled through, if its broker polls through one.
    terminal: CloudTerminal | None = None

    @property
    def lease(self) -> Lease:
        return Lease(self.connection.connection_id, self.lease_token)


def _terminal(row: asyncpg.Record) -> CloudTerminal | None:
    if row["terminal_provider"] is None or row["terminal_account_id"] is None:
        return None
    return CloudTerminal(
        row["terminal_provider"], row["terminal_account_id"], row["terminal_region"]
    )


class SyncSchedule:
    def __init__(
        self,
        pool: asyncpg.Pool,
        owner: str,
        lease_seconds: float,
        *,
        user_limit: UserSyncLimit | None = None,
    ) -> None:
        self._pool = pool
        self._owner = owner
        self._lease = lease_seconds
        self._user_limit = user_limit

    @property
    def lease_seconds(self) -> float:
        return self._lease

    @property
    def renew_every_seconds(self) -> float:
        """How often a running sync renews its lease: a missed renewal or two still holds it."""
        return self._lease / 3

    async def lease_due(
        self, limit: int, exclude: frozenset[uuid.UUID] = frozenset()
    ) -> list[DueSync]:
        """Lease up to `limit` due connections, none of `exclude` (those this replica runs)."""
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute(_LEASE_LOCK)
            rows = await conn.fetch(
                _LEASE_DUE,
                self._owner,
                limit,
                self._lease,
                credential_kinds.BROKER_CREDENTIALS,
                list(exclude),
                self._user_limit.amount if self._user_limit else None,
                self._user_limit.window_seconds if self._user_limit else 0,
            )
        return [
            DueSync(
                connection=ConnectionRef.from_row(r, id_column="connection_id"),
                lease_token=r["lease_token"],
                cursor=r["cursor"],
                consecutive_failures=r["consecutive_failures"],
                api_url=r["api_url"],
                had_error=r["had_error"],
                terminal=_terminal(r),
            )
            for r in rows
        ]

    async def standing(self) -> list[BrokerStanding]:
        """Per broker: connections due (and leasable), leased, failing, the longest failure run."""
        rows = await self._pool.fetch(_STANDING, credential_kinds.BROKER_CREDENTIALS)
        return [
            BrokerStanding(
                r["broker"], r["due"], r["leased"], r["failing"], r["max_consecutive_failures"]
            )
            for r in rows
        ]

    async def renew(self, lease: Lease) -> None:
        """Extend the lease by another `lease_seconds`; LeaseLost if it is no longer ours."""
        if await self._pool.fetchval(_RENEW, lease.connection_id, lease.token, self._lease) is None:
            raise LeaseLost(str(lease.connection_id))

    async def save_cursor(self, lease: Lease, cursor: str) -> str:
        """Advance the cursor (and renew the lease); returns the cursor now stored, which is
        the old one if a numeric `cursor` would move it back. LeaseLost if not ours."""
        saved: str | None = await self._pool.fetchval(
            _SAVE_CURSOR, lease.connection_id, lease.token, cursor, self._lease
        )
        if saved is None:
            raise LeaseLost(str(lease.connection_id))
        return saved

    async def succeeded(self, lease: Lease, jitter: float) -> None:
        async with self._pool.acquire() as conn, conn.transaction():
            if await conn.fetchval(_SUCCEEDED, lease.connection_id, lease.token, jitter) is None:
                raise LeaseLost(str(lease.connection_id))

    async def failed(
        self, lease: Lease, reason: str, retry_in_seconds: float, error_after: int
    ) -> tuple[int, bool]:
        """Count a failure; (failures in a row, whether this one turned the connection to error)."""
        async with self._pool.acquire() as conn, conn.transaction():
            failures = await conn.fetchval(
                _FAILED, lease.connection_id, lease.token, reason, retry_in_seconds
            )
            if failures is None:
                raise LeaseLost(str(lease.connection_id))
            turned = False
            if failures > error_after:
                turned = await conn.fetchval(_MARK_ERROR, lease.connection_id, reason) is not None
            else:
                await conn.execute(_SYNC_ENDED, lease.connection_id)
            await conn.execute(_AUDIT_FAILURE, lease.connection_id)
        return failures, turned

    async def credentials_rejected(
        self, lease: Lease, credential_id: uuid.UUID, reason: str
    ) -> bool:
        """The broker refused this credential: stop syncing until another one is stored (see
        `_LEASE_DUE`), and mark it for rotation. True if the connection turned to error now."""
        async with self._pool.acquire() as conn, conn.transaction():
            if (
                await conn.fetchval(
                    _CREDENTIALS_REJECTED, lease.connection_id, lease.token, credential_id, reason
                )
                is None
            ):
                raise LeaseLost(str(lease.connection_id))
            await conn.execute(_MARK_CREDENTIAL_INVALID, credential_id, "rejected_by_broker")
            await conn.execute(_AUDIT_FAILURE, lease.connection_id)
            turned = await conn.fetchval(_MARK_ERROR, lease.connection_id, reason) is not None
        return turned

    async def told_to_wait(self, lease: Lease, seconds: float, reason: str) -> None:
        """The broker asked to wait: try again then, no failure counted, `reason` noted.

        The poller calls this only when the previous attempt ended well (`had_error` false): it
        leaves `last_error` set, so a request to wait on the very next attempt is counted as a
        failure instead, as is every one after, until a success clears `last_error`."""
        async with self._pool.acquire() as conn, conn.transaction():
            if (
                await conn.fetchval(
                    _TOLD_TO_WAIT, lease.connection_id, lease.token, seconds, reason
                )
                is None
            ):
                raise LeaseLost(str(lease.connection_id))
            await conn.execute(_SYNC_ENDED, lease.connection_id)

    async def postpone(self, lease: Lease, seconds: float) -> None:
        """Give the lease back without a verdict; LeaseLost if it was no longer ours."""
        async with self._pool.acquire() as conn, conn.transaction():
            if await conn.fetchval(_POSTPONE, lease.connection_id, lease.token, seconds) is None:
                raise LeaseLost(str(lease.connection_id))
            await conn.execute(_SYNC_ENDED, lease.connection_id)
