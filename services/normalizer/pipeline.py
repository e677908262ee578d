"""Raw events in, canonical batches out; what cannot be mapped goes to the dead-letter topic."""

from __future__ import annotations

import asyncio
import traceback
from collections import Counter as Tally
from collections.abc import Sequence
from functools import partial

from aiokafka import AIOKafkaProducer, ConsumerRecord
from aiokafka.structs import RecordMetadata
from opentelemetry.trace import Span, Status, StatusCode
from prometheus_client import Counter
from pydantic import ValidationError

from services.normalizer.mappers import Mapping, mapper_for
from services.shared.dead_letters import DeadLetterPublisher, ItemRejection
from services.shared.envelope import RawEvent
from services.shared.errors import InvalidEvent, TransientError
from services.shared.logging import get_logger
from services.shared.messaging import process_span, record_delivery, start_send_span

_log = get_logger("poscal.normalizer")
# By broker only: the item types come from payloads, so they must not become label values.
SKIPPED_ITEMS = Counter(
    "poscal_normalizer_items_skipped", "Payload items recorded and skipped", ["broker"]
)

# The reason code of an event whose items were only partly mapped; each item's own code is
# in the dead letter's `rejections`.
REJECTED_ITEMS = "rejected_items"


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


def describe_rejections(mapping: Mapping) -> str:
    """`3 items rejected (37 mapped): invalid_deal x2, unknown_deal_type x1`."""
    counts = Tally(r.code for r in mapping.rejected)
    by_code = ", ".join(
        f"{code} x{n}" for code, n in sorted(counts.items(), key=lambda c: (-c[1], c[0]))
    )
    mapped = len(mapping.batch.fills) + len(mapping.batch.cash_movements)
    noun = "item" if len(mapping.rejected) == 1 else "items"
    return f"{len(mapping.rejected)} {noun} rejected ({mapped} mapped): {by_code}"


def item_rejections(mapping: Mapping) -> tuple[ItemRejection, ...]:
    """The mapper's rejections as the dead letter lists them."""
    return tuple(
        ItemRejection(index=r.index, code=r.code, detail=r.detail, item=r.item)
        for r in mapping.rejected
    )


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
        # may commit. Order per partition is kept by the producer. Each send's span ends when
        # its delivery settles, so a batch abandoned part-way leaves no span open.
        deliveries: list[asyncio.Future[RecordMetadata]] = []
        for record in records:
            with process_span(record, self._group):
                mapping = await self._map(record)
                if mapping is not None:
                    deliveries.append(await self._enqueue(mapping))
        failure: BaseException | None = None
        for delivery in deliveries:
            try:
                await delivery
            except Exception as exc:
                failure = failure or exc
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
        if mapping.rejected:
            # One letter for the event, however many of its items were refused: the valid
            # ones still go on, and the budget counts this event once.
            await self._dead_letters.reject(
                record,
                REJECTED_ITEMS,
                describe_rejections(mapping),
                str(event.event_id),
                rejections=item_rejections(mapping),
            )
        else:
            self._dead_letters.accepted()
        if mapping.skipped:
            # Recorded, never fatal: transaction types the journal has no use for (orders,
            # configuration changes, aggregate rows...).
            SKIPPED_ITEMS.labels(event.connection.broker).inc(len(mapping.skipped))
            _log.info(
                "items skipped",
                event_id=str(event.event_id),
                skipped=dict(Tally(s.type[:64] for s in mapping.skipped)),
            )
        return mapping

    async def _enqueue(self, mapping: Mapping) -> asyncio.Future[RecordMetadata]:
        key = str(mapping.batch.connection.connection_id)
        headers: list[tuple[str, bytes]] = [
            ("poscal-event-id", str(mapping.batch.event_id).encode())
        ]
        span = start_send_span(self._topic, key, headers)
        span.set_attribute("poscal.fills", len(mapping.batch.fills))
        try:
            delivery: asyncio.Future[RecordMetadata] = await self._producer.send(
                self._topic,
                mapping.batch.model_dump_json().encode(),
                key=key.encode(),
                headers=headers,
            )
        except Exception as exc:
            _end_failed(span, exc)
            raise TransientError(f"canonical batch not enqueued: {exc!r}") from exc
        except BaseException as exc:  # cancelled while waiting for buffer space
            _end_failed(span, exc)
            raise
        delivery.add_done_callback(partial(_end_on_delivery, span))
        return delivery


def _end_on_delivery(span: Span, delivery: asyncio.Future[RecordMetadata]) -> None:
    """Ends a send's span as its delivery settled, whether or not anyone still awaits it. The
    producer settles every send it accepted: acknowledged, failed, or timed out (its stop
    flushes first)."""
    if delivery.cancelled():
        _end_failed(span, asyncio.CancelledError())
    elif (exc := delivery.exception()) is not None:
        _end_failed(span, exc)
    else:
        metadata = delivery.result()
        record_delivery(span, metadata.partition, metadata.offset)
        span.end()


def _end_failed(span: Span, exc: BaseException) -> None:
    span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
    span.end()
