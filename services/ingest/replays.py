"""Replay defence: a webhook id is accepted at most once per connection, across restarts and
replicas, because claiming it is an INSERT against a primary key (never check-then-insert)."""

from __future__ import annotations

import asyncio
import math
import uuid
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from services.ingest.database_calls import database_call
from services.ingest.group_writes import GroupWrites
from services.ingest.verification_failures import ENDED_BY_ACCEPTANCES
from services.shared.errors import TransientError
from services.shared.logging import get_logger

_log = get_logger("poscal.ingest.replays")

# One row per request, in request order: whether it won the id, and if not, the claim it met as
# this statement's snapshot saw it. None there means a concurrent claim committed after the
# snapshot: it is new, so in flight.
_CLAIM = """
WITH wanted AS MATERIALIZED (
    SELECT * FROM unnest($1::uuid[], $2::text[], $3::uuid[], $4::uuid[], $5::uuid[])
        AS c(connection_id, webhook_id, user_id, event_id, token)
), claimed AS (
    INSERT INTO webhook_deliveries AS d
        (connection_id, webhook_id, user_id, event_id, state, claim_token, claimed_at)
    SELECT connection_id, webhook_id, user_id, event_id, 'publishing', token, now() FROM wanted
    ON CONFLICT (connection_id, webhook_id) DO UPDATE
        SET claim_token = EXCLUDED.claim_token, claimed_at = EXCLUDED.claimed_at
        WHERE d.state = 'publishing' AND d.claimed_at < now() - make_interval(secs => $6::float8)
    RETURNING d.claim_token
)
SELECT w.token, c.claim_token IS NOT NULL AS won, d.state,
    extract(epoch FROM d.claimed_at - now())::float8 + $6::float8 AS lease_left
FROM wanted w
LEFT JOIN claimed c ON c.claim_token = w.token
LEFT JOIN webhook_deliveries d ON d.connection_id = w.connection_id AND d.webhook_id = w.webhook_id
"""

# Accepted, and in the same statement the runs of failed verifications these acceptances end
# (verification_failures.py says which).
_MARK_ACCEPTED = """
WITH accepted AS (
    UPDATE webhook_deliveries AS d SET state = 'accepted', accepted_at = v.at
    FROM unnest($1::uuid[], $2::text[], $3::uuid[], $4::timestamptz[], $5::text[])
        AS v(connection_id, webhook_id, token, at, source)
    WHERE d.connection_id = v.connection_id AND d.webhook_id = v.webhook_id
      AND d.claim_token = v.token
    RETURNING d.connection_id, d.claimed_at, v.source
)"""
_ACCEPT = _MARK_ACCEPTED + ENDED_BY_ACCEPTANCES

_RELEASE = """
DELETE FROM webhook_deliveries
WHERE connection_id = $1 AND webhook_id = $2 AND claim_token = $3 AND state = 'publishing'
"""


@dataclass(frozen=True)
class Claim:
    """This request owns the webhook id: it publishes, then marks it accepted or releases it."""

    connection_id: uuid.UUID
    webhook_id: str
    token: uuid.UUID

    @property
    def key(self) -> tuple[uuid.UUID, str]:
        return (self.connection_id, self.webhook_id)


@dataclass(frozen=True)
class Replayed:
    """The webhook id is durably accepted already."""


@dataclass(frozen=True)
class InFlight:
    """Another claim holds the id and may still publish (or its replica died): retry later."""

    retry_after_seconds: int


ClaimOutcome = Claim | Replayed | InFlight


def _in_flight(lease_left_seconds: float) -> InFlight:
    return InFlight(max(1, math.ceil(lease_left_seconds)))


@dataclass(frozen=True)
class _Request:
    claim: Claim
    user_id: uuid.UUID
    event_id: uuid.UUID
    answer: asyncio.Future[ClaimOutcome]


@dataclass(frozen=True)
class _Acceptance:
    claim: Claim
    at: datetime
    source: str


def _answer(request: _Request, result: ClaimOutcome | BaseException) -> None:
    """Answer a waiting request, unless it stopped waiting (its client went away)."""
    if request.answer.done():
        return
    if isinstance(result, BaseException):
        request.answer.set_exception(result)
    else:
        request.answer.set_result(result)


class DeliveryClaims:
    """Claims of webhook ids, written in batches; what a delivery is told follows its claim.

    A claim is `publishing` until Kafka has acknowledged its event; then it is marked `accepted`
    right away, on the request's own path (not waited for). What a second delivery of the id is told
    follows the claim it meets, so that 409 means one thing, "durably accepted":

    - `accepted`: 409 (`Replayed`), stop sending it;
    - `publishing` within its lease: 503 with the time left on the lease (`InFlight`). Its publisher
      may still succeed, or may have died between claim and publish: either way the sender keeps
      retrying and loses nothing;
    - `publishing` past its lease: taken over (a new claim), so a dead publisher's event is
      published by the retry. At worst the same event id is published twice, which every consumer
      downstream absorbs.

    A replica that has published an id answers its retries 409 even before the `accepted` mark is
    written. A failed publish releases the claim, so the sender's retry can succeed at once. The
    acceptance also ends the run of failed verifications of the source that sent it (see
    verification_failures.py), but only failures counted before its claim, by the database's clock.

    Claims (and acceptances) that arrive together are written together (group_writes.py): one
    statement per batch of concurrent requests, rows in key order (so concurrent batches cannot
    deadlock), and while `claim_writes` claim statements (one acceptance statement) are under
    way, what arrives meanwhile waits for one to end and goes in the next: the front door pays
    one round trip per batch rather than per webhook, and batches grow with the load rather than
    the statements. Within a batch the first claim of an id wins and the others are in flight
    behind it, as they would be one by one.
    """

    def __init__(
        self,
        pool: asyncpg.Pool,
        lease_seconds: float,
        timeout_seconds: float = 5.0,
        claim_writes: int = 2,
    ) -> None:
        self._pool = pool
        self._lease = lease_seconds
        self._timeout = timeout_seconds
        self._claims = GroupWrites(self._take_claims, max_in_flight=claim_writes)
        # One at a time: nobody waits for an acceptance, so it may wait for the one before.
        self._accepts = GroupWrites(self._take_accepts, max_in_flight=1)
        # Ids this replica knows are on Kafka whose `accepted` mark is not written yet: a retry
        # meanwhile is a replay, truthfully, though the database still says `publishing`.
        self._accepting: dict[tuple[uuid.UUID, str], int] = {}

    async def claim(
        self,
        connection_id: uuid.UUID,
        user_id: uuid.UUID,
        webhook_id: str,
        event_id: uuid.UUID,
    ) -> ClaimOutcome:
        """The claim, or what holds this webhook id for this connection already.

        Raises TransientError if the database cannot answer.
        """
        loop = asyncio.get_running_loop()
        request = _Request(
            Claim(connection_id, webhook_id, uuid.uuid4()), user_id, event_id, loop.create_future()
        )
        self._claims.add(request)
        return await request.answer

    def accepted(self, claim: Claim, at: datetime, source: str) -> None:
        """Mark the claim accepted (its event is on Kafka), ending the run of failed
        verifications of `source` before it; written at once, not waited for."""
        self._accepts.add(_Acceptance(claim, at, source))
        self._accepting[claim.key] = self._accepting.get(claim.key, 0) + 1

    async def release(self, claim: Claim) -> None:
        """Give the id back after a failed publish, so the sender's retry is not in flight."""
        async with database_call("releasing the webhook id", self._timeout):
            await self._pool.execute(_RELEASE, claim.connection_id, claim.webhook_id, claim.token)

    async def drain(self) -> None:
        """Wait until every claim and acceptance handed in so far is written (at shutdown)."""
        await self._claims.drain()
        await self._accepts.drain()

    async def _take_claims(self, batch: list[_Request]) -> None:
        try:
            await self._write_claims(batch)
        finally:  # whatever happened, nobody is left waiting
            for request in batch:
                _answer(request, TransientError("claiming the webhook id was interrupted"))

    async def _write_claims(self, batch: list[_Request]) -> None:
        first: dict[tuple[uuid.UUID, str], _Request] = {}
        for request in batch:
            if request.claim.key in first:
                # The same id twice at once: the first may still fail and release it.
                _answer(request, _in_flight(self._lease))
            else:
                first[request.claim.key] = request
        unique = [first[key] for key in sorted(first)]
        try:
            outcomes = await self._insert(unique)
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
            _answer(request, outcomes[request.claim.token])

    async def _write_alone(self, request: _Request) -> None:
        try:
            outcomes = await self._insert([request])
        except (asyncpg.IntegrityConstraintViolationError, TransientError) as exc:
            _answer(request, TransientError(f"claiming the webhook id failed: {exc}"))
        else:
            _answer(request, outcomes[request.claim.token])

    async def _insert(self, requests: list[_Request]) -> dict[uuid.UUID, ClaimOutcome]:
        """Raises IntegrityConstraintViolationError (a row whose connection or user is gone),
        and TransientError if the database cannot answer."""
        # Ids on Kafka whose `accepted` mark was not written when the statement began: its
        # snapshot may still say `publishing` once the mark is written and forgotten here.
        on_kafka = {r.claim.key for r in requests if r.claim.key in self._accepting}
        async with database_call(
            "claiming webhook ids",
            self._timeout,
            answers=(asyncpg.IntegrityConstraintViolationError,),
        ):
            rows = await self._pool.fetch(
                _CLAIM,
                [r.claim.connection_id for r in requests],
                [r.claim.webhook_id for r in requests],
                [r.user_id for r in requests],
                [r.event_id for r in requests],
                [r.claim.token for r in requests],
                self._lease,
            )
        claims = {r.claim.token: r.claim for r in requests}
        outcomes: dict[uuid.UUID, ClaimOutcome] = {}
        for row in rows:
            token = row["token"]
            key = claims[token].key
            if row["won"]:
                outcomes[token] = claims[token]
            elif row["state"] == "accepted" or key in on_kafka or key in self._accepting:
                outcomes[token] = Replayed()
            elif row["state"] == "publishing":
                outcomes[token] = _in_flight(row["lease_left"])
            else:  # claimed by a transaction that committed after this statement began
                outcomes[token] = _in_flight(self._lease)
        return outcomes

    async def _take_accepts(self, batch: list[_Acceptance]) -> None:
        batch.sort(key=lambda item: item.claim.key)
        try:
            async with database_call("marking webhook ids accepted", self._timeout):
                await self._pool.execute(
                    _ACCEPT,
                    [item.claim.connection_id for item in batch],
                    [item.claim.webhook_id for item in batch],
                    [item.claim.token for item in batch],
                    [item.at for item in batch],
                    [item.source for item in batch],
                )
        except (TransientError, asyncpg.PostgresError) as exc:
            # The events are on Kafka already. Their claims stay `publishing` until the lease
            # passes (a retry meanwhile is told 503); one after that takes the id over and
            # publishes the same event id again, which downstream absorbs.
            _log.warning("accepted webhook ids not marked", count=len(batch), cause=str(exc))
        finally:
            for item in batch:
                left = self._accepting.pop(item.claim.key) - 1
                if left:
                    self._accepting[item.claim.key] = left
