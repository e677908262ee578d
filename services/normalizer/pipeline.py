"""Raw events in, canonical batches out; what cannot be mapped goes to the dead-letter topic."""

from __future__ import annotations

import asyncio
import traceback
from collections.abc import Sequence
from dataclasses import dataclass

from aiokafka import AIOKafkaProducer, ConsumerRecord
from aiokafka.structs import RecordMetadata
from opentelemetry.trace import Span, Status, StatusCode
from pydantic import ValidationError

from services.normalizer.mappers import Mapping, mapper_for
from services.shared.dead_letters import DeadLetterPublisher
from services.shared.envelope import RawEvent
from services.shared.errors import InvalidEvent, TransientError
from services.shared.logging import get_logger
from services.shared.messaging import process_span, record_delivery, start_send_span

_log = get_logger("poscal.normalizer")


def normalize(event: RawEvent) -> Mapping:
    """The pure step: one raw event to what it means, by the connection's broker."""
    mapper = mapper_for(event.connection.broker)
    try:
        return mapper(event)
    except InvalidEvent:
        raise
    except Exception as exc:
        # A mapper bug must not block the partition: dead-letter it (within the budget).
        last = traceback.extract_tb(exc.__traceback__)[-1]
        raise InvalidEvent(
            "mapper_error", f"{type(exc).__name__} at {last.filename}:{last.lineno}: {exc}"
        ) from exc


class Normalizer:
    def __init__(
        self,
        producer: AIOKafkaProducer,
        canonical_topic: str,
        dead_letters: DeadLetterPublisher,
        consumer_group: str,
    ) -> None:
        self._producer = producer
        self._topic = canonical_topic
        self._dead_letters = dead_letters
        self._group = consumer_group

    async def handle(self, records: Sequence[ConsumerRecord]) -> None:
        # Sends are pipelined: all enqueued, then every acknowledgement awaited before the loop
        # may commit. Order per partition is kept by the producer.
        pending: list[_PendingSend] = []
        for record in records:
            with process_span(record, self._group):
                mapping = await self._map(record)
                if mapping is not None:
                    pending.append(await self._enqueue(mapping))
        failure: BaseException | None = None
        for send in pending:
            try:
                metadata = await send.delivery
                record_delivery(send.span, metadata.partition, metadata.offset)
            except Exception as exc:
                failure = failure or exc
                send.span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
            finally:
                send.span.end()
        if failure is not None:
            raise TransientError(f"canonical batch not acknowledged: {failure!r}") from failure

    async def _map(self, record: ConsumerRecord) -> Mapping | None:
        try:
            event = RawEvent.model_validate_json(record.value or b"")
        except ValidationError as exc:
            await self._dead_letters.reject(record, "invalid_envelope", str(exc))
            return None
        try:
            mapping = normalize(event)
        except InvalidEvent as exc:
            await self._dead_letters.reject(record, exc.code, exc.detail, str(event.event_id))
            return None
        for rejection in mapping.rejected:
            await self._dead_letters.publish(
                record,
                rejection.code,
                f"item {rejection.index}: {rejection.detail}",
                event_id=str(event.event_id),
                item=rejection.item,
            )
        self._dead_letters.accepted()
        return mapping

    async def _enqueue(self, mapping: Mapping) -> _PendingSend:
        key = str(mapping.batch.connection.connection_id)
        headers: list[tuple[str, bytes]] = [
            ("poscal-event-id", str(mapping.batch.event_id).encode())
        ]
        span = start_send_span(self._topic, key, headers)
        span.set_attribute("poscal.fills", len(mapping.batch.fills))
        try:
            delivery = await self._producer.send(
                self._topic,
                mapping.batch.model_dump_json().encode(),
                key=key.encode(),
                headers=headers,
            )
        except Exception as exc:
            span.end()
            raise TransientError(f"canonical batch not enqueued: {exc!r}") from exc
        return _PendingSend(span, delivery)


@dataclass(frozen=True)
class _PendingSend:
    span: Span
    delivery: asyncio.Future[RecordMetadata]
