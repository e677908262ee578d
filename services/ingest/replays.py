"""Replay defence: a webhook id is accepted at most once per connection, across restarts and
replicas, because claiming it is an INSERT against a primary key (never check-then-insert).

A claim is `publishing` until Kafka has acknowledged its event; then it is marked `accepted`
(and the connection's failure count reset) right away, on the request's own path. A failed
publish releases the claim, so the sender's retry can succeed. A claim whose replica died before
marking it may be taken over once its lease has passed: the worst case is the same event id
published twice, which every consumer downstream absorbs.

Claims (and acceptances) that arrive together are written together: one statement per batch of
concurrent requests, rows in key order (so concurrent batches cannot deadlock), so the front
door pays one round trip per batch rather than per webhook. Within a batch the first claim of an
id wins and the others are replays, as they would be one by one.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from services.ingest.database_calls import database_call
from services.shared.errors import TransientError
from services.shared.logging import get_logger

_log = get_logger("poscal.ingest.replays")

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

# Accepted: and a verified delivery ends any run of failed verifications before it (failures
# that came later are counted already and stay counted).
_ACCEPT = """
WITH accepted AS (
    UPDATE webhook_deliveries AS d SET state = 'accepted', accepted_at = v.at
    FROM unnest($1::uuid[], $2::text[], $3::uuid[], $4::timestamptz[])
        AS v(connection_id, webhook_id, token, at)
    WHERE d.connection_id = v.connection_id AND d.webhook_id = v.webhook_id
      AND d.claim_token = v.token
    RETURNING d.connection_id, v.at
)
UPDATE mt5_security_audit AS a SET consecutive_failures = 0, updated_at = now()
FROM (SELECT connection_id, max(at) AS at FROM accepted GROUP BY connection_id) AS s
WHERE a.connection_id = s.connection_id AND a.consecutive_failures > 0
  AND (a.last_failure_at IS NULL OR a.last_failure_at <= s.at)
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

    @property
    def key(self) -> tuple[uuid.UUID, str]:
        return (self.connection_id, self.webhook_id)


@dataclass(frozen=True)
class _Request:
    claim: Claim
    user_id: uuid.UUID
    event_id: uuid.UUID
    answer: asyncio.Future[Claim | None]


def _answer(request: _Request, result: Claim | BaseException | None) -> None:
    """Answer a waiting request, unless it stopped waiting (its client went away)."""
    if request.answer.done():
        return
    if isinstance(result, BaseException):
        request.answer.set_exception(result)
    else:
        request.answer.set_result(result)


class DeliveryClaims:
    def __init__(
        self, pool: asyncpg.Pool, lease_seconds: float, timeout_seconds: float = 5.0
    ) -> None:
        self._pool = pool
        self._lease = lease_seconds
        self._timeout = timeout_seconds
        self._pending_claims: list[_Request] = []
        self._pending_accepts: list[tuple[Claim, datetime]] = []
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
        if not self._pending_claims:  # written after every claim of this loop turn is in
            loop.call_soon(self._start, self._take_claims)
        self._pending_claims.append(request)
        return await request.answer

    def accepted(self, claim: Claim, at: datetime) -> None:
        """Mark the claim accepted (its event is on Kafka); written at once, not waited for."""
        if not self._pending_accepts:
            asyncio.get_running_loop().call_soon(self._start, self._take_accepts)
        self._pending_accepts.append((claim, at))

    async def release(self, claim: Claim) -> None:
        """Give the id back after a failed publish, so the sender's retry is not a replay."""
        async with database_call("releasing the webhook id", self._timeout):
            await self._pool.execute(_RELEASE, claim.connection_id, claim.webhook_id, claim.token)

    async def drain(self) -> None:
        """Wait for every write in flight (at shutdown)."""
        while self._writes:
            await asyncio.gather(*self._writes, return_exceptions=True)

    def _start(self, take: Callable[[], Coroutine[Any, Any, None]]) -> None:
        task = asyncio.create_task(take())
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    async def _take_claims(self) -> None:
        batch, self._pending_claims = self._pending_claims, []
        try:
            await self._write_claims(batch)
        finally:  # whatever happened, nobody is left waiting
            for request in batch:
                _answer(request, TransientError("claiming the webhook id was interrupted"))

    async def _write_claims(self, batch: list[_Request]) -> None:
        first: dict[tuple[uuid.UUID, str], _Request] = {}
        for request in batch:
            if request.claim.key in first:
                _answer(request, None)  # the same id twice at once: one is a replay
            else:
                first[request.claim.key] = request
        unique = [first[key] for key in sorted(first)]
        try:
            won = await self._insert(unique)
        except asyncpg.IntegrityConstraintViolationError:
            # A row whose connection or user was deleted meanwhile: the others still go in.
            for request in unique:
                await self._write_alone(request)
            return
        except TransientError as exc:
            for request in unique:
                _answer(request, exc)
            return
        for request in unique:
            _answer(request, request.claim if request.claim.token in won else None)

    async def _write_alone(self, request: _Request) -> None:
        try:
            won = await self._insert([request])
        except (asyncpg.IntegrityConstraintViolationError, TransientError) as exc:
            _answer(request, TransientError(f"claiming the webhook id failed: {exc}"))
        else:
            _answer(request, request.claim if request.claim.token in won else None)

    async def _insert(self, requests: list[_Request]) -> set[uuid.UUID]:
        async with database_call("claiming webhook ids", self._timeout):
            rows = await self._pool.fetch(
                _CLAIM,
                [r.claim.connection_id for r in requests],
                [r.claim.webhook_id for r in requests],
                [r.user_id for r in requests],
                [r.event_id for r in requests],
                [r.claim.token for r in requests],
                self._lease,
            )
        return {row["claim_token"] for row in rows}

    async def _take_accepts(self) -> None:
        batch, self._pending_accepts = self._pending_accepts, []
        batch.sort(key=lambda item: item[0].key)
        try:
            async with database_call("marking webhook ids accepted", self._timeout):
                await self._pool.execute(
                    _ACCEPT,
                    [claim.connection_id for claim, _ in batch],
                    [claim.webhook_id for claim, _ in batch],
                    [claim.token for claim, _ in batch],
                    [at for _, at in batch],
                )
        except (TransientError, asyncpg.PostgresError) as exc:
            # The events are on Kafka already. Their claims stay `publishing` until the lease
            # passes; a replay after that is the same event id, which downstream absorbs.
            _log.warning("accepted webhook ids not marked", count=len(batch), cause=str(exc))
