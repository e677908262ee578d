"""Accepting one webhook: find its connection by the URL (`find`), verify it, apply the abuse
controls, claim its webhook id, then make it durable (`receive`). The order matters:

1. unknown URL or failed verification: 401, alike (an unknown URL from a client over its refusal
   budget: 429, see app.py); a failure of a known connection is counted for its source, which
   after a few is throttled (429, a wait that doubles per failure);
2. a connection its operator locked: 423, and a live one not enabled yet: 403, told only to a
   sender whose delivery verifies;
3. over the connection's or user's rate: 429;
4. a webhook id already accepted for the connection: 409; one still claimed by a publish that
   has not finished (its replica may have died): 503 until it is accepted or taken over;
5. published and acknowledged by Kafka: 202 (a failed publish releases the claim: 503).

Whatever other sources did, a delivery that verifies goes on past step 1, and no refusal budget
stops it after that: it is refused only for what its own connection and user did.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Protocol

from services.ingest.audit import Attempt
from services.ingest.connections import UnreadableSecret, VerifiableConnection
from services.ingest.errors import (
    InProgress,
    LiveNotEnabled,
    Locked,
    RateLimited,
    Replay,
    Unauthorized,
    Unavailable,
    VerificationThrottled,
)
from services.ingest.rate_limits import WebhookRateLimits
from services.ingest.replays import Claim, ClaimOutcome, InFlight, Replayed
from services.ingest.signatures import (
    SignatureRejected,
    SignedDelivery,
    check_timestamp,
    parse_headers,
    verify,
)
from services.shared.envelope import RawEvent
from services.shared.errors import TransientError
from services.shared.logging import get_logger

_log = get_logger("poscal.ingest")


class ConnectionLookup(Protocol):
    async def find(self, path_id: uuid.UUID) -> VerifiableConnection | None:
        """None if unknown; raises UnreadableSecret or, if it cannot answer, TransientError."""


class EventSink(Protocol):
    async def publish(self, event: RawEvent) -> None: ...


class Claims(Protocol):
    async def claim(
        self, connection_id: uuid.UUID, user_id: uuid.UUID, webhook_id: str, event_id: uuid.UUID
    ) -> ClaimOutcome: ...

    def accepted(self, claim: Claim, at: datetime, source: str) -> None: ...

    async def release(self, claim: Claim) -> None: ...


class FailureCounter(Protocol):
    def throttled(self, connection_id: uuid.UUID, source: str) -> int | None: ...

    def verified(self, connection_id: uuid.UUID, source: str) -> None: ...

    async def count(self, attempt: Attempt, source: str) -> int: ...


class WebhookReceiver:
    def __init__(
        self,
        *,
        connections: ConnectionLookup,
        sink: EventSink,
        claims: Claims,
        failures: FailureCounter,
        rate_limits: WebhookRateLimits,
        tolerance_seconds: int,
    ) -> None:
        self._connections = connections
        self._sink = sink
        self._claims = claims
        self._failures = failures
        self._rate_limits = rate_limits
        self._tolerance = tolerance_seconds

    async def find(self, attempt: Attempt) -> VerifiableConnection | None:
        """The connection the URL names (recorded in `attempt`), or None if there is none for
        this broker or the path id is no UUID. Raises Unauthorized for a connection whose secret
        does not open, and Unavailable if the lookup cannot be made."""
        if attempt.webhook_path_id is None:  # the URL's last segment is no UUID
            return None
        try:
            connection = await self._connections.find(attempt.webhook_path_id)
        except UnreadableSecret as exc:
            # Our fault, not the sender's, but a sender must not learn which connections exist:
            # the same 401 as an unknown one, and an error for whoever runs the service.
            _log.error(
                "webhook secret does not decrypt: is the master key the one it was sealed under?",
                connection_id=str(exc.connection_id),
                cause=type(exc.__cause__).__name__,
            )
            raise Unauthorized("unreadable_secret") from None
        except TransientError as exc:
            raise Unavailable("connection_lookup_failed") from exc
        if connection is None or connection.ref.broker != attempt.broker:
            return None
        attempt.connection_id = connection.ref.connection_id
        attempt.user_id = connection.ref.user_id
        return connection

    async def receive(
        self,
        attempt: Attempt,
        connection: VerifiableConnection,
        source: str,
        headers: Mapping[str, str],
        body: bytes,
    ) -> RawEvent:
        """Returns the event once the broker has acknowledged it; raises an IngestRefusal.

        `connection` is what `find` returned for this attempt; `source` is whom failed
        verifications count against (see client_ip.client_source).
        """
        delivery = await self._verified(attempt, source, connection, headers, body)
        if connection.locked:
            raise Locked("locked")
        if not connection.live_enabled:
            raise LiveNotEnabled("live_not_enabled")
        limited = self._rate_limits.take(connection.ref.connection_id, connection.ref.user_id)
        if limited is not None:
            raise RateLimited(*limited)
        event = RawEvent.wrap(
            source="webhook",
            connection=connection.ref,
            received_at=attempt.received_at,
            delivery_id=delivery.webhook_id,
            sent_at=datetime.fromtimestamp(delivery.timestamp, UTC),
            content_type=headers.get("content-type", "application/json"),
            body=body,
        )
        attempt.event_id = event.event_id
        claim = await self._claim(connection, delivery, event)
        try:
            await self._sink.publish(event)
        except TransientError as exc:
            await self._release(claim)
            raise Unavailable("publish_failed") from exc
        self._claims.accepted(claim, attempt.received_at, source)
        return event

    async def _verified(
        self,
        attempt: Attempt,
        source: str,
        connection: VerifiableConnection,
        headers: Mapping[str, str],
        body: bytes,
    ) -> SignedDelivery:
        connection_id = connection.ref.connection_id
        try:
            delivery = parse_headers(headers)
            attempt.webhook_id = delivery.webhook_id
            attempt.webhook_timestamp = delivery.timestamp
            check_timestamp(delivery.timestamp, attempt.received_at.timestamp(), self._tolerance)
            verify(delivery, body, connection.keys)
        except SignatureRejected as exc:
            attempt.reason = exc.code
            wait = self._failures.throttled(connection_id, source)
            if wait is not None:  # held off already: answered from memory, not counted again
                raise VerificationThrottled("verification_throttled", wait) from None
            wait = await self._count_failure(attempt, source)
            if wait:
                raise VerificationThrottled(exc.code, wait) from None
            raise Unauthorized(exc.code) from None
        self._failures.verified(connection_id, source)
        return delivery

    async def _count_failure(self, attempt: Attempt, source: str) -> int:
        try:
            return await self._failures.count(attempt, source)
        except TransientError as exc:
            # The sender's answer is a 401 either way; the count is lost, and said so.
            _log.warning(
                "failed verification not counted",
                connection_id=str(attempt.connection_id),
                cause=str(exc),
            )
            return 0

    async def _claim(
        self, connection: VerifiableConnection, delivery: SignedDelivery, event: RawEvent
    ) -> Claim:
        try:
            outcome = await self._claims.claim(
                connection.ref.connection_id,
                connection.ref.user_id,
                delivery.webhook_id,
                event.event_id,
            )
        except TransientError as exc:
            raise Unavailable("replay_store_unavailable") from exc
        if isinstance(outcome, Claim):
            return outcome
        # Nothing is delivered by this request: it must not use up the sender's allowance (so
        # its duplicates never refuse a new webhook id). Its refusal budget counts it instead.
        self._rate_limits.give_back(connection.ref.connection_id, connection.ref.user_id)
        if isinstance(outcome, Replayed):
            raise Replay("replay")
        assert isinstance(outcome, InFlight)
        raise InProgress("in_flight", outcome.retry_after_seconds)

    async def _release(self, claim: Claim) -> None:
        try:
            await self._claims.release(claim)
        except TransientError as exc:
            # The claim stays until its lease passes; a retry before then is answered 503.
            _log.warning("webhook id not released after a failed publish", cause=str(exc))
