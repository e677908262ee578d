"""Accepting one webhook: verify it against its connection, then make it durable."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Protocol

from services.ingest.connections import UnreadableSecret, VerifiableConnection
from services.ingest.errors import Unauthorized, Unavailable
from services.ingest.signatures import SignatureRejected, check_timestamp, parse_headers, verify
from services.shared.envelope import RawEvent
from services.shared.errors import TransientError
from services.shared.logging import get_logger

_log = get_logger("poscal.ingest")


class ConnectionLookup(Protocol):
    async def find(self, connection_id: uuid.UUID) -> VerifiableConnection | None:
        """None if unknown; raises UnreadableSecret or, if it cannot answer, TransientError."""


class EventSink(Protocol):
    async def publish(self, event: RawEvent) -> None: ...


class WebhookReceiver:
    def __init__(
        self,
        connections: ConnectionLookup,
        sink: EventSink,
        tolerance_seconds: int,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._connections = connections
        self._sink = sink
        self._tolerance = tolerance_seconds
        self._clock = clock

    async def receive(
        self, broker: str, connection_id: str, headers: Mapping[str, str], body: bytes
    ) -> RawEvent:
        """Verify, then publish; returns the event once the broker has acknowledged it."""
        received_at = self._clock()
        try:
            delivery = parse_headers(headers)
            check_timestamp(delivery.timestamp, received_at.timestamp(), self._tolerance)
        except SignatureRejected as exc:
            raise Unauthorized(exc.code) from None
        try:
            parsed_id = uuid.UUID(connection_id)
        except ValueError:
            raise Unauthorized("unknown_connection") from None
        try:
            connection = await self._connections.find(parsed_id)
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
            raise Unavailable(str(exc)) from exc
        if connection is None or connection.ref.broker != broker:
            raise Unauthorized("unknown_connection")
        try:
            verify(delivery, body, connection.keys)
        except SignatureRejected as exc:
            raise Unauthorized(exc.code) from None
        event = RawEvent.wrap(
            source="webhook",
            connection=connection.ref,
            received_at=received_at,
            delivery_id=delivery.webhook_id,
            sent_at=datetime.fromtimestamp(delivery.timestamp, UTC),
            content_type=headers.get("content-type", "application/json"),
            body=body,
        )
        try:
            await self._sink.publish(event)
        except TransientError as exc:
            raise Unavailable(str(exc)) from exc
        return event
