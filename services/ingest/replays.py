"""Replay defence: a webhook id is accepted at most once per connection, across restarts and
replicas, because claiming it is an INSERT against a primary key (never check-then-insert).

A claim is `publishing` until its event is acknowledged by Kafka (then the audit trail marks it
`accepted`), and released if publishing fails, so the sender's retry can succeed. A claim whose
replica died mid-publish may be taken over once its lease has passed: the worst case is the same
event id published twice, which every consumer downstream absorbs.

Claims that arrive together are written together: one statement per batch of concurrent
requests, so the front door pays one round trip per batch rather than per webhook. Within a
batch the first claim of an id wins and the others are replays, as they would be one by one.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass

import asyncpg

from services.ingest.database_calls import database_call
from services.shared.errors import TransientError

_CLAIM = """
INSERT INTO webhook_deliveries AS d
    (connection_id, webhook_id, user_id, event_id, state, claim_token, claimed_at)
SELECT c.connection_id, c.webhook_id, c.user_id, c.event_id, 'publishing', c.token, now()
FROM unnest($1::uuid[], $2::text[], $3::uuid[], $4::uuid[], $5::uuid[])
    AS c(connection_id, webhook_id, user_id, event_id, token)
ON CONFLICT (connection_id, webhook_id) DO UPDATE
    SET claim_token = EXCLUDED.claim_token, claimed_at = EXCLUDED.claimed_at
    WHERE d.state = 'publishing' AND d.claimed_at < now() - make_interval(secs => $6::float8)
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


@dataclass(frozen=True)
class _Request:
    claim: Claim
    user_id: uuid.UUID
    event_id: uuid.UUID
    answer: asyncio.Future[Claim | None]


class DeliveryClaims:
    def __init__(
        self, pool: asyncpg.Pool, lease_seconds: float, timeout_seconds: float = 5.0
    ) -> None:
        self._pool = pool
        self._lease = lease_seconds
        self._timeout = timeout_seconds
        self._pending: list[_Request] = []
        self._writes: set[asyncio.Task[None]] = set()

    async def claim(
        self,
        connection_id: uuid.UUID,
        user_id: uuid.UUID,
        webhook_id: str,
        event_id: uuid.UUID,
    ) -> Claim | None:
        """The claim, or None if this webhook id was already taken for this connection.

        Raises TransientError if the database cannot answer.
        """
        loop = asyncio.get_running_loop()
        request = _Request(
            Claim(connection_id, webhook_id, uuid.uuid4()), user_id, event_id, loop.create_future()
        )
        if not self._pending:
            loop.call_soon(self._write_pending)  # after every claim of this loop turn is in
        self._pending.append(request)
        return await request.answer

    def _write_pending(self) -> None:
        batch, self._pending = self._pending, []
        task = asyncio.create_task(self._write(batch))
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    async def _write(self, batch: list[_Request]) -> None:
        first: dict[tuple[uuid.UUID, str], _Request] = {}
        for request in batch:
            key = (request.claim.connection_id, request.claim.webhook_id)
            if key in first:
                request.answer.set_result(None)  # the same id twice at once: one is a replay
            else:
                first[key] = request
        unique = list(first.values())
        try:
            async with database_call("claiming webhook ids", self._timeout):
                won = await self._pool.fetch(
                    _CLAIM,
                    [r.claim.connection_id for r in unique],
                    [r.claim.webhook_id for r in unique],
                    [r.user_id for r in unique],
                    [r.event_id for r in unique],
                    [r.claim.token for r in unique],
                    self._lease,
                )
        except (TransientError, asyncpg.PostgresError) as exc:
            for request in unique:
                if not request.answer.done():
                    request.answer.set_exception(
                        TransientError(f"claiming the webhook id failed: {exc}")
                    )
            return
        tokens = {row["claim_token"] for row in won}
        for request in unique:
            if not request.answer.done():
                request.answer.set_result(request.claim if request.claim.token in tokens else None)

    async def release(self, claim: Claim) -> None:
        """Give the id back after a failed publish, so the sender's retry is not a replay."""
        async with database_call("releasing the webhook id", self._timeout):
            await self._pool.execute(_RELEASE, claim.connection_id, claim.webhook_id, claim.token)
