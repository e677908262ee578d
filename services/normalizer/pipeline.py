"""Raw events in, canonical batches out; what cannot be mapped goes to the dead-letter topic."""

from __future__ import annotations

import traceback
from collections.abc import Sequence

from aiokafka import AIOKafkaProducer, ConsumerRecord
from pydantic import ValidationError

from services.normalizer.mappers import Mapping, mapper_for
from services.shared.dead_letters import DeadLetterBudget, DeadLetterPublisher
from services.shared.envelope import RawEvent
from services.shared.errors import InvalidEvent, TransientError
from services.shared.logging import get_logger
from services.shared.messaging import process_span, record_delivery, send_span

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
        budget: DeadLetterBudget,
        consumer_group: str,
    ) -> None:
        self._producer = producer
        self._topic = canonical_topic
        self._dead_letters = dead_letters
        self._budget = budget
        self._group = consumer_group

    async def handle(self, records: Sequence[ConsumerRecord]) -> None:
        for record in records:
            with process_span(record, self._group):
                await self._handle_one(record)

    async def _handle_one(self, record: ConsumerRecord) -> None:
        try:
            event = RawEvent.model_validate_json(record.value or b"")
        except ValidationError as exc:
            await self._reject(record, "invalid_envelope", str(exc), None)
            return
        try:
            mapping = normalize(event)
        except InvalidEvent as exc:
            await self._reject(record, exc.code, exc.detail, str(event.event_id))
            return
        await self._publish(mapping, record)
        for rejection in mapping.rejected:
            await self._dead_letters.publish(
                record,
                rejection.code,
                f"item {rejection.index}: {rejection.detail}",
                event_id=str(event.event_id),
                item=rejection.item,
            )
        self._budget.record_valid()

    async def _reject(
        self, record: ConsumerRecord, code: str, reason: str, event_id: str | None
    ) -> None:
        _log.warning(
            "event dead-lettered",
            reason_code=code,
            reason=reason[:500],
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
        )
        await self._dead_letters.publish(record, code, reason, event_id=event_id)
        self._budget.record_invalid()

    async def _publish(self, mapping: Mapping, record: ConsumerRecord) -> None:
        key = str(mapping.batch.connection.connection_id)
        headers: list[tuple[str, bytes]] = [
            ("poscal-event-id", str(mapping.batch.event_id).encode())
        ]
        with send_span(self._topic, key, headers) as span:
            try:
                metadata = await self._producer.send_and_wait(
                    self._topic,
                    mapping.batch.model_dump_json().encode(),
                    key=key.encode(),
                    headers=headers,
                )
            except Exception as exc:
                raise TransientError(f"canonical batch not acknowledged: {exc!r}") from exc
            record_delivery(span, metadata.partition, metadata.offset)
            span.set_attribute("poscal.fills", len(mapping.batch.fills))
