"""Raw events onto the raw topic, acknowledged before `publish` returns: ingest's webhooks and the
poller's pages alike."""

from __future__ import annotations

import asyncio
from typing import Protocol

from aiokafka import AIOKafkaProducer

from services.shared.envelope import RawEvent
from services.shared.errors import TransientError
from services.shared.messaging import record_delivery, send_span


class RawEventSink(Protocol):
    """Where raw events go: Kafka (RawEventPublisher), or what a test keeps."""

    async def publish(self, event: RawEvent) -> None:
        """Durably there once this returns; raises TransientError when it cannot be made so."""


class RawEventPublisher:
    def __init__(self, producer: AIOKafkaProducer, topic: str, timeout_seconds: float) -> None:
        self._producer = producer
        self._topic = topic
        self._timeout = timeout_seconds

    async def publish(self, event: RawEvent) -> None:
        """Durably on the raw topic (acks=all), keyed by connection so its order is kept."""
        key = str(event.connection.connection_id)
        headers: list[tuple[str, bytes]] = [("poscal-event-id", str(event.event_id).encode())]
        with send_span(self._topic, key, headers) as span:
            try:
                # A timeout, not wait_for: no task of its own per webhook.
                async with asyncio.timeout(self._timeout):
                    metadata = await self._producer.send_and_wait(
                        self._topic,
                        event.model_dump_json().encode(),
                        key=key.encode(),
                        headers=headers,
                    )
            except Exception as exc:  # any failure to get an ack means "not accepted"
                raise TransientError(f"raw event not acknowledged: {type(exc).__name__}") from exc
            record_delivery(span, metadata.partition, metadata.offset)
