"""Failed verifications, counted per connection and source (a client address) in Postgres, so
every replica counts into one number: they throttle that source only, and raise alerts."""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

import asyncpg

from services.ingest.audit import Attempt, printable
from services.ingest.database_calls import database_call
from services.ingest.metrics import VERIFICATION_ALERTS
from services.shared.logging import get_logger

_log = get_logger("poscal.ingest.verification_failures")

# A source quiet this long starts a new run: its old failures no longer count (and retention
# removes their row).
FAILURE_RUN = timedelta(days=1)
_MAX_THROTTLED = 100_000

# The source's count and the connection's consecutive count (`mt5_security_audit`), in one trip.
# Times are the database's, so an acceptance can tell which failures came after its claim.
_COUNT_FAILURE = """
WITH by_source AS (
    INSERT INTO webhook_verification_failures AS f
        (connection_id, source, user_id, failures, first_failure_at, last_failure_at)
    VALUES ($1, $2, $3, 1, now(), now())
    ON CONFLICT (connection_id, source) DO UPDATE SET
        failures = CASE WHEN f.last_failure_at < now() - $6::interval THEN 1
                        ELSE f.failures + 1 END,
        first_failure_at = CASE WHEN f.last_failure_at < now() - $6::interval THEN now()
                                ELSE f.first_failure_at END,
        last_failure_at = now()
    RETURNING f.failures
), by_connection AS (
    INSERT INTO mt5_security_audit AS a (connection_id, user_id, last_failure_at, last_ip,
        last_user_agent, consecutive_failures)
    VALUES ($1, $3, now(), $4, $5, 1)
    ON CONFLICT (connection_id) DO UPDATE SET
        consecutive_failures = a.consecutive_failures + 1,
        last_failure_at = now(),
        last_ip = EXCLUDED.last_ip,
        last_user_agent = EXCLUDED.last_user_agent,
        updated_at = now()
    RETURNING a.consecutive_failures
)
SELECT (SELECT failures FROM by_source) AS source_failures,
    (SELECT consecutive_failures FROM by_connection) AS connection_failures
"""

# How a verified delivery ends failure runs, as the rest of the statement that marks deliveries
# accepted (replays.py), after its CTE `accepted` (connection_id, claimed_at, source): the run
# of its source, and the connection's consecutive count, end if every failure counted was
# before its claim. A failure counted after the claim keeps the count as it is, whenever the
# acceptance is written. Both sides use the database's clock (`now()` of claim and count), never
# a replica's.
ENDED_BY_ACCEPTANCES = """, per_source AS (
    UPDATE webhook_verification_failures AS f SET failures = 0
    FROM (SELECT connection_id, source, max(claimed_at) AS at FROM accepted GROUP BY 1, 2) AS s
    WHERE f.connection_id = s.connection_id AND f.source = s.source AND f.failures > 0
      AND f.last_failure_at <= s.at
)
UPDATE mt5_security_audit AS a SET consecutive_failures = 0, updated_at = now()
FROM (SELECT connection_id, max(claimed_at) AS at FROM accepted GROUP BY connection_id) AS s
WHERE a.connection_id = s.connection_id AND a.consecutive_failures > 0
  AND (a.last_failure_at IS NULL OR a.last_failure_at <= s.at)
"""

_FORCE_ROTATION = """
UPDATE mt5_credentials SET rotation_forced_at = now(), rotation_forced_reason = $2
WHERE connection_id = $1 AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > now())
    AND rotation_forced_at IS NULL
"""


@dataclass(frozen=True)
class ThrottlePolicy:
    """How a failing source is held off: `free` failures are answered 401, each further one
    doubles the wait (1 s, 2 s, 4 s...) up to `cap_seconds`."""

    free: int
    cap_seconds: int

    def wait_after(self, failures: int) -> int:
        """Seconds the source is throttled for after its `failures`-th failure in a row."""
        beyond = failures - self.free
        if beyond <= 0:
            return 0
        return min(self.cap_seconds, 1 << min(beyond - 1, 30))


class VerificationFailures:
    """Failures throttle their source only, with a Retry-After that doubles per further failure
    up to a cap (ThrottlePolicy). An alert is raised, and the connection's credentials are
    marked for forced rotation, when one source reaches the alert threshold, and when the
    connection's consecutive failures from all sources together reach a multiple of it (a
    forgery spread over many addresses). Nothing here ever stops a delivery that verifies, and
    nothing here locks a connection (only an operator does): a stranger who knows a webhook URL
    cannot lock its sender out.

    While a source is throttled, its failures are answered from this replica's memory (no
    write); each replica learns a source's throttle from the shared count at its first failure
    there."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        alert_threshold: int,
        policy: ThrottlePolicy,
        timeout_seconds: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._pool = pool
        self._alert_threshold = alert_threshold
        self._policy = policy
        self._timeout = timeout_seconds
        self._clock = clock
        # (connection, source) -> until when (this replica's clock) its failures get 429.
        self._throttled: dict[tuple[uuid.UUID, str], float] = {}

    def throttled(self, connection_id: uuid.UUID, source: str) -> int | None:
        """Seconds this source's failures are still throttled for on this replica, or None."""
        until = self._throttled.get((connection_id, source))
        if until is None:
            return None
        left = until - self._clock()
        if left <= 0:
            del self._throttled[(connection_id, source)]
            return None
        return max(1, math.ceil(left))

    def verified(self, connection_id: uuid.UUID, source: str) -> None:
        """The source signed correctly: its failures stop being throttled here at once (the
        count itself ends with the acceptance's write: ENDED_BY_ACCEPTANCES)."""
        self._throttled.pop((connection_id, source), None)

    async def count(self, attempt: Attempt, source: str) -> int:
        """Count a failed verification of a known connection from `source`; returns how many
        seconds that source is now throttled for (0: not throttled).

        Raises TransientError if the database cannot answer.
        """
        assert attempt.connection_id is not None and attempt.user_id is not None
        async with database_call("counting a failed verification", self._timeout):
            row = await self._pool.fetchrow(
                _COUNT_FAILURE,
                attempt.connection_id,
                source,
                attempt.user_id,
                attempt.client_ip,
                printable(attempt.user_agent),
                FAILURE_RUN,
            )
            assert row is not None
            failures: int = row["source_failures"]
            connection_failures: int = row["connection_failures"]
            # Each count is returned to one request only, so exactly one replica sees it reached.
            scope = self._alert_scope(failures, connection_failures)
            if scope is not None:
                await self._pool.execute(
                    _FORCE_ROTATION, attempt.connection_id, "verification_failures"
                )
        if scope is not None:
            self._alert(attempt, source, scope, failures, connection_failures)
        wait = self._policy.wait_after(failures)
        if wait:
            self._throttle(attempt.connection_id, source, wait)
        return wait

    def _throttle(self, connection_id: uuid.UUID, source: str, seconds: int) -> None:
        now = self._clock()
        if len(self._throttled) >= _MAX_THROTTLED:
            self._throttled = {key: t for key, t in self._throttled.items() if t > now}
            if len(self._throttled) >= _MAX_THROTTLED:
                self._throttled.clear()
        self._throttled[(connection_id, source)] = now + seconds

    def _alert_scope(self, failures: int, connection_failures: int) -> str | None:
        """ "source" when this source's run reaches the threshold, "connection" when the
        connection's consecutive failures from every source reach a multiple of it (only one
        alert when both do), None otherwise."""
        if failures == self._alert_threshold:
            return "source"
        if connection_failures % self._alert_threshold == 0:
            return "connection"
        return None

    def _alert(
        self,
        attempt: Attempt,
        source: str,
        scope: str,
        failures: int,
        connection_failures: int,
    ) -> None:
        VERIFICATION_ALERTS.inc()
        _log.error(
            "ALERT repeated failed webhook verifications"
            + (" from one source" if scope == "source" else " of one connection from any source"),
            alert="webhook_verification_failures",
            scope=scope,
            connection_id=str(attempt.connection_id),
            user_id=str(attempt.user_id),
            source=source,
            failures=failures,
            consecutive_failures=connection_failures,
            client_ip=attempt.client_ip,
            last_reason=attempt.reason,
        )
