"""Accepting one webhook: the endpoint reads the request, the receiver decides it, the audit
records what it came to."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Protocol

from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response

from services.ingest.audit import Attempt
from services.ingest.client_refusals import client_budget, sender_budget
from services.ingest.connections import UnreadableSecret, VerifiableConnection
from services.ingest.errors import (
    ClientThrottled,
    IncompleteBody,
    IngestRefusal,
    InProgress,
    LiveNotEnabled,
    Locked,
    Paused,
    PayloadTooLarge,
    RateLimited,
    Replay,
    Unauthorized,
    Unavailable,
    UnsupportedMediaType,
    VerificationThrottled,
)
from services.ingest.rate_limits import WebhookRateLimits
from services.ingest.replays import Claim, ClaimOutcome, InFlight, Replayed
from services.shared.client_ip import client_address, client_source
from services.shared.envelope import RawEvent
from services.shared.errors import TransientError
from services.shared.logging import get_logger
from services.shared.publishing import RawEventSink
from services.shared.signatures import (
    SignatureRejected,
    SignedDelivery,
    check_timestamp,
    parse_headers,
    verify,
)

if TYPE_CHECKING:
    from services.ingest.bootstrap import IngestWiring
    from services.ingest.settings import IngestSettings

WEBHOOK_ROUTE = "/v1/webhooks/{broker}/{webhook_path_id}"
_log = get_logger("poscal.ingest")


# --- the endpoint --------------------------------------------------------------------------


async def receive_webhook(request: Request) -> Response:
    """POST a webhook: 202 once its event is on Kafka, else the refusal (see errors.py)."""
    settings: IngestSettings = request.app.state.settings
    wiring: IngestWiring = request.app.state.wiring
    attempt = _arrived(request)
    span = trace.get_current_span()
    span.set_attribute("poscal.broker", attempt.broker)
    client = client_source(attempt.client_ip)
    receipt = Receipt()
    try:
        connection = await _connection(wiring, attempt, client)
        attempt = replace(
            attempt,
            connection_id=connection.ref.connection_id,
            user_id=connection.ref.user_id,
        )
        if not _is_json(request.headers.get("content-type")):
            raise UnsupportedMediaType("unsupported_media_type")
        body = await _read_body(request, settings.max_body_bytes)
        receipt = await wiring.receiver.receive(attempt, connection, client, request.headers, body)
        if receipt.refusal is not None:
            raise receipt.refusal
    except IngestRefusal as refusal:
        _refused(wiring, receipt.of(attempt, refusal.status_code, refusal.reason), client, refusal)
        raise
    assert receipt.event is not None
    wiring.audit.record(receipt.of(attempt, 202, "accepted"))
    span.set_attribute("poscal.connection_id", str(attempt.connection_id))
    span.set_attribute("poscal.event_id", str(receipt.event.event_id))
    # Every attempt is in webhook_attempts and the trace: at INFO a log line per webhook would
    # cost the front door more than it tells.
    _log.debug(
        "webhook accepted",
        connection_id=str(attempt.connection_id),
        event_id=str(receipt.event.event_id),
    )
    return JSONResponse({"status": "accepted", "event_id": str(receipt.event.event_id)}, 202)


def _arrived(request: Request) -> Attempt:
    """What the request itself says: the attempt as it arrived, before anything is decided."""
    peer = request.client.host if request.client else None
    try:
        path_id: uuid.UUID | None = uuid.UUID(request.path_params["webhook_path_id"])
    except ValueError:
        path_id = None  # the URL's last segment is no UUID
    return Attempt(
        broker=request.path_params["broker"],
        received_at=datetime.now(UTC),
        # Every X-Forwarded-For line, in order: a proxy may add its own line rather than append.
        client_ip=client_address(
            peer,
            ",".join(request.headers.getlist("x-forwarded-for")) or None,
            request.app.state.trusted_proxies,
        ),
        user_agent=request.headers.get("user-agent"),
        webhook_path_id=path_id,
    )


async def _connection(wiring: IngestWiring, attempt: Attempt, client: str) -> VerifiableConnection:
    """The connection the URL names. For a malformed or unknown URL: 401, or for a client over
    its refusal budget 429 at once (nothing more is read; misses are cached, so this is cheap).
    For a known one the budget stops nothing: the delivery is verified first."""
    connection = await wiring.receiver.find(attempt)
    if connection is not None:
        return connection
    wait = wiring.refusals.wait(client_budget(client))
    if wait is not None:
        raise ClientThrottled("rate_limited_refusals", wait)
    raise Unauthorized("unknown_connection")


def _is_json(content_type: str | None) -> bool:
    media_type = (content_type or "").split(";", 1)[0].strip().lower()
    return media_type == "application/json" or (
        media_type.startswith("application/") and media_type.endswith("+json")
    )


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    # isascii: str.isdigit() also accepts digits like "²" that int() refuses.
    if declared is not None and declared.isascii() and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge("declared_length_over_limit")
    body = bytearray()
    try:
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise PayloadTooLarge("body_over_limit")  # stop reading: the rest never arrives
    except ClientDisconnect:
        raise IncompleteBody("client_disconnected") from None
    return bytes(body)


def _refused(wiring: IngestWiring, attempt: Attempt, client: str, refusal: IngestRefusal) -> None:
    """Audit, trace and log a refusal, and spend a refusal budget for it: the sender's for a
    delivery that verified, else the client address's."""
    span = trace.get_current_span()
    span.set_attribute("poscal.refusal_reason", refusal.reason)
    if attempt.connection_id is not None:
        span.set_attribute("poscal.connection_id", str(attempt.connection_id))
    if refusal.status_code >= 500:
        span.set_status(Status(StatusCode.ERROR, refusal.reason))
    if refusal.spends_refusal_budget:
        if refusal.verified:
            assert attempt.connection_id is not None
            budget = sender_budget(client, attempt.connection_id)
        else:
            budget = client_budget(client)
        if not wiring.refusals.refused(budget, attempt):
            return  # folded into its window's one record: no row, no log line of its own
    wiring.audit.record(attempt)
    _log.warning(
        "webhook refused",
        connection_id=str(attempt.connection_id) if attempt.connection_id else None,
        webhook_path_id=str(attempt.webhook_path_id) if attempt.webhook_path_id else None,
        status=refusal.status_code,
        reason=refusal.reason,
    )


# --- the receiver --------------------------------------------------------------------------


@dataclass(frozen=True)
class Receipt:
    """What receiving one delivery came to: its event on Kafka, or the refusal; and what was
    learned of the delivery on the way, for its audit record."""

    event: RawEvent | None = None
    refusal: IngestRefusal | None = None
    webhook_id: str | None = None
    webhook_timestamp: int | None = None
    event_id: uuid.UUID | None = None

    def of(self, attempt: Attempt, status_code: int, reason: str) -> Attempt:
        """The attempt's audit record, answered `status_code` for `reason`."""
        return replace(
            attempt,
            webhook_id=self.webhook_id,
            webhook_timestamp=self.webhook_timestamp,
            event_id=self.event_id,
            status_code=status_code,
            reason=reason,
        )


# The Retry-After of a paused connection's 423: the Expert Advisor backs off from it (doubling up
# to an hour), so deliveries resume within about that long of the user resuming.
PAUSED_RETRY_SECONDS = 60


class ConnectionLookup(Protocol):
    async def find(self, path_id: uuid.UUID) -> VerifiableConnection | None:
        """None if unknown; raises UnreadableSecret or, if it cannot answer, TransientError."""


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
    """Decides one delivery, in an order that matters:

    1. unknown URL or failed verification: 401, alike (an unknown URL from a client over its
       refusal budget: 429); a failure of a known connection is counted for its source, which
       after a few is throttled (429, a wait that doubles per failure);
    2. a connection its operator locked: 423; one its user paused: 423 with Retry-After (the
       sender keeps the delivery and retries, so nothing is lost); a live one not enabled yet:
       403; each told only to a sender whose delivery verifies;
    3. over the connection's or user's rate: 429;
    4. a webhook id already accepted for the connection: 409; one still claimed by a publish
       that has not finished (its replica may have died): 503 until accepted or taken over;
    5. published and acknowledged by Kafka: 202 (a failed publish releases the claim: 503).

    Whatever other sources did, a delivery that verifies goes on past step 1, and no refusal
    budget stops it after that: it is refused only for what its own connection and user did.
    """

    def __init__(
        self,
        *,
        connections: ConnectionLookup,
        sink: RawEventSink,
        claims: Claims,
        failures: FailureCounter,
        rate_limits: WebhookRateLimits,
        tolerance_seconds: int,
        paused_retry_seconds: int = PAUSED_RETRY_SECONDS,
    ) -> None:
        self._connections = connections
        self._sink = sink
        self._claims = claims
        self._failures = failures
        self._rate_limits = rate_limits
        self._tolerance = tolerance_seconds
        self._paused_retry_seconds = paused_retry_seconds

    async def find(self, attempt: Attempt) -> VerifiableConnection | None:
        """The connection the attempt's URL names, or None if there is none for its broker or
        the path id is no UUID. Raises Unauthorized for a connection whose secret does not open,
        and Unavailable if the lookup cannot be made."""
        if attempt.webhook_path_id is None:
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
        return connection

    async def receive(
        self,
        attempt: Attempt,
        connection: VerifiableConnection,
        source: str,
        headers: Mapping[str, str],
        body: bytes,
    ) -> Receipt:
        """The delivery's receipt: its event once the broker has acknowledged it, or the
        refusal. `connection` is what `find` returned for this attempt; `source` is whom failed
        verifications count against (see client_ip.client_source)."""
        delivery: SignedDelivery | None = None
        event: RawEvent | None = None
        try:
            delivery = parse_headers(headers)
            await self._verify(attempt, source, connection, delivery, body)
            if connection.locked:
                raise Locked("locked")
            if connection.paused:
                raise Paused("paused", self._paused_retry_seconds)
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
            claim = await self._claim(connection, delivery, event)
            try:
                await self._sink.publish(event)
            except TransientError as exc:
                await self._release(claim)
                raise Unavailable("publish_failed") from exc
            self._claims.accepted(claim, attempt.received_at, source)
        except SignatureRejected as exc:  # headers that are no delivery at all
            return Receipt(refusal=await self._failed(attempt, source, connection, exc.code))
        except IngestRefusal as refusal:
            return _receipt(delivery, event, refusal)
        return _receipt(delivery, event)

    async def _verify(
        self,
        attempt: Attempt,
        source: str,
        connection: VerifiableConnection,
        delivery: SignedDelivery,
        body: bytes,
    ) -> None:
        try:
            check_timestamp(delivery.timestamp, attempt.received_at.timestamp(), self._tolerance)
            verify(delivery, body, connection.keys)
        except SignatureRejected as exc:
            raise await self._failed(
                replace(
                    attempt, webhook_id=delivery.webhook_id, webhook_timestamp=delivery.timestamp
                ),
                source,
                connection,
                exc.code,
            ) from None
        self._failures.verified(connection.ref.connection_id, source)

    async def _failed(
        self, attempt: Attempt, source: str, connection: VerifiableConnection, code: str
    ) -> IngestRefusal:
        """The refusal of a delivery that failed verification, counted for its source."""
        wait = self._failures.throttled(connection.ref.connection_id, source)
        if wait is not None:  # held off already: answered from memory, not counted again
            return VerificationThrottled("verification_throttled", wait)
        try:
            wait = await self._failures.count(replace(attempt, reason=code), source)
        except TransientError as exc:
            # The sender's answer is a 401 either way; the count is lost, and said so.
            _log.warning(
                "failed verification not counted",
                connection_id=str(attempt.connection_id),
                cause=str(exc),
            )
            wait = 0
        return VerificationThrottled(code, wait) if wait else Unauthorized(code)

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


def _receipt(
    delivery: SignedDelivery | None, event: RawEvent | None, refusal: IngestRefusal | None = None
) -> Receipt:
    return Receipt(
        event=event if refusal is None else None,
        refusal=refusal,
        webhook_id=delivery.webhook_id if delivery else None,
        webhook_timestamp=delivery.timestamp if delivery else None,
        event_id=event.event_id if event else None,
    )
