"""Replay defence: a webhook id is accepted at most once per connection, across restarts and
replicas, because claiming it is one INSERT against a primary key (never check-then-insert).

A claim is `publishing` until its event is acknowledged by Kafka (then the audit trail marks it
`accepted`), and released if publishing fails, so the sender's retry can succeed. A claim whose
replica died mid-publish may be taken over once its lease has passed: the worst case is the same
event id published twice, which every consumer downstream absorbs.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import asyncpg

from services.ingest.database_calls import database_call

_CLAIM = """
INSERT INTO webhook_deliveries AS d
    (connection_id, webhook_id, user_id, event_id, state, claim_token, claimed_at)
VALUES ($1, $2, $3, $4, 'publishing', $5, now())
ON CONFLICT (connection_id, webhook_id) DO UPDATE
    SET claim_token = EXCLUDED.claim_token, claimed_at = EXCLUDED.claimed_at
    WHERE d.state = 'publishing' AND d.claimed_at < now() - make_interval(secs => $6)
RETURNING claim_token
"""

_RELEASE = """
DELETE FROM webhook_deliveries
WHERE connection_id = $1 AND webhook_id = $2 AND claim_token = $3 AND state = 'publishing'
"""


@dataclass(frozen=True)
class Claim:
    connection_id: uuid.UUID
    webhook_id: str
    token: uuid.UUID


class DeliveryClaims:
    def __init__(
        self, pool: asyncpg.Pool, lease_seconds: float, timeout_seconds: float = 5.0
    ) -> None:
        self._pool = pool
        self._lease = lease_seconds
        self._timeout = timeout_seconds

    async def claim(
        self,
        connection_id: uuid.UUID,
        user_id: uuid.UUID,
        webhook_id: str,
        event_id: uuid.UUID,
    ) -> Claim | None:
        """The claim, or None if this webhook id was already taken for this connection."""
        token = uuid.uuid4()
        async with database_call("claiming the webhook id", self._timeout):
            won = await self._pool.fetchval(
                _CLAIM, connection_id, webhook_id, user_id, event_id, token, self._lease
            )
        return Claim(connection_id, webhook_id, token) if won is not None else None

    async def release(self, claim: Claim) -> None:
        """Give the id back after a failed publish, so the sender's retry is not a replay."""
        async with database_call("releasing the webhook id", self._timeout):
            await self._pool.execute(_RELEASE, claim.connection_id, claim.webhook_id, claim.token)
