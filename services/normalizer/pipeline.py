"""Raw events in, canonical batches out; what cannot be mapped goes to the dead-letter topic."""

from __future__ import annotations

import asyncio
import traceback
from collections import Counter as Tally
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial

from aiokafka import AIOKafkaProducer, ConsumerRecord
from aiokafka.structs import RecordMetadata
from opentelemetry.trace import Span, Status, StatusCode
from prometheus_client import Counter
from pydantic import TypeAdapter, ValidationError

from services.shared.brokers import MappedEvent, mapper_for
from services.shared.canonical import CanonicalBatch
from services.shared.dead_letters import DeadLetterPublisher, ItemRejection, safe_text
from services.shared.envelope import RawEvent
from services.shared.errors import InvalidEvent, TransientError
from services.shared.kafka import MAX_MESSAGE_BYTES, refused_for_its_content
from services.shared.logging import get_logger
from services.shared.messaging import (
    ending_spans,
    record_delivery,
    start_process_span,
    start_send_span,
)
from services.shared.probes import kafka_answers

_log = get_logger("poscal.normalizer")
# By broker only: the item types come from payloads, so they must not become label values.
SKIPPED_ITEMS = Counter(
    "poscal_normalizer_items_skipped", "Payload items recorded and skipped", ["broker"]
)

# A canonical batch as the bytes sent (model_dump_json's text, without encoding it again).
_CANONICAL_JSON = TypeAdapter(CanonicalBatch)

# The reason code of an event whose items were only partly mapped; each item's own code is
# in the dead letter's `rejections`.
REJECTED_ITEMS = "rejected_items"


def normalize(event: RawEvent) -> MappedEvent:
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


def describe_rejections(mapping: MappedEvent) -> str:
    """`3 items rejected (37 mapped): invalid_deal x2, unknown_deal_type x1`."""
    counts = Tally(r.code for r in mapping.rejected)
    by_code = ", ".join(
        f"{code} x{n}" for code, n in sorted(counts.items(), key=lambda c: (-c[1], c[0]))
    )
    mapped = len(mapping.batch.fills) + len(mapping.batch.cash_movements)
    noun = "item" if len(mapping.rejected) == 1 else "items"
    return f"{len(mapping.rejected)} {noun} rejected ({mapped} mapped): {by_code}"


def item_rejections(mapping: MappedEvent) -> tuple[ItemRejection, ...]:
    """The mapper's rejections as the dead letter lists them."""
    return tuple(
        ItemRejection(index=r.index, code=r.code, detail=r.detail, item=r.item, location=r.location)
        for r in mapping.rejected
    )


@dataclass(frozen=True)
class _Canonical:
    """One record's canonical batch, encoded and ready to send."""

    record: ConsumerRecord
    mapping: MappedEvent
    value: bytes


class Normalizer:
    def __init__(
        self,
        producer: AIOKafkaProducer,
        canonical_topic: str,
        dead_letters: DeadLetterPublisher,
        consumer_group: str,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
    ) -> None:
        self._producer = producer
        self._topic = canonical_topic
        self._dead_letters = dead_letters
        self._group = consumer_group
        self._max_bytes = max_message_bytes

    async def handle(self, records: Sequence[ConsumerRecord]) -> None:
        """Whatever one record's content causes is that record's dead letter; only a producer
        that cannot deliver fails the batch (TransientError), whose records the consume loop
        retries, per partition.

        The whole batch is mapped first, then every canonical batch is enqueued at once (so the
        producer sends them in as few requests as it can), then every acknowledgement is awaited
        before the loop may commit. Order per partition is kept by the producer. Each record's
        span continues the trace its headers carry and is the parent of its send's span, which
        ends when its delivery settles, so a batch abandoned part-way leaves no span open."""
        mapped: list[tuple[_Canonical, Span]] = []
        deliveries: list[tuple[_Canonical, asyncio.Future[RecordMetadata]]] = []
        with ending_spans([]) as spans:
            for record in records:
                span = start_process_span(record, self._group)
                spans.append(span)
                ready = await self._map(record)
                if ready is not None:
                    mapped.append((ready, span))
            for ready, span in mapped:
                deliveries.append((ready, await self._enqueue(ready, span)))
        failure: BaseException | None = None
        for ready, delivery in deliveries:
            try:
                await delivery
            except Exception as exc:
                if refused_for_its_content(exc):
                    batch = ready.mapping.batch
                    await self._dead_letters.reject(
                        ready.record,
                        "canonical_refused",
                        f"the broker refused the canonical batch: {type(exc).__name__}: {exc}",
                        str(batch.event_id),
                        source=batch.connection.user_id,
                    )
                    continue
                failure = failure or exc
        if failure is not None:
            raise TransientError(f"canonical batch not acknowledged: {failure!r}") from failure

    async def _map(self, record: ConsumerRecord) -> _Canonical | None:
        """The record's canonical batch, or None once its dead letter is sent. Every step here
        is pure and about this record alone, so whatever fails is the record's problem."""
        try:
            event = RawEvent.model_validate_json(record.value or b"")
        except ValidationError as exc:
            await self._dead_letters.reject(record, "invalid_envelope", str(exc))
            return None
        except Exception as exc:  # e.g. nested too deeply to validate
            await self._dead_letters.reject(record, "invalid_envelope", _described(exc))
            return None
        event_id = str(event.event_id)
        # The tenant: whatever its records cause counts against the budget as its own.
        tenant = event.connection.user_id
        try:
            mapping = normalize(event)
        except InvalidEvent as exc:
            await self._dead_letters.reject(record, exc.code, exc.detail, event_id, source=tenant)
            return None
        try:
            value = _CANONICAL_JSON.dump_json(mapping.batch)
        except Exception as exc:
            await self._dead_letters.reject(
                record, "unencodable_batch", _described(exc), event_id, source=tenant
            )
            return None
        if len(value) > self._max_bytes:
            detail = f"{len(value)} bytes, over the {self._max_bytes} a message may have"
            await self._dead_letters.reject(
                record, "canonical_too_large", detail, event_id, source=tenant
            )
            return None
        if mapping.rejected:
            # One letter for the event, however many of its items were refused: the valid
            # ones still go on, and the budget counts this event once.
            await self._dead_letters.reject(
                record,
                REJECTED_ITEMS,
                describe_rejections(mapping),
                event_id,
                rejections=item_rejections(mapping),
                source=tenant,
            )
        else:
            self._dead_letters.accepted(tenant)
        if mapping.skipped:
            # Recorded, never fatal: transaction types the journal has no use for (orders,
            # configuration changes, aggregate rows...).
            SKIPPED_ITEMS.labels(event.connection.broker).inc(len(mapping.skipped))
            _log.info(
                "items skipped",
                event_id=event_id,
                skipped=dict(Tally(safe_text(s.type, 64) for s in mapping.skipped)),
            )
        return _Canonical(record, mapping, value)

    async def _enqueue(self, ready: _Canonical, parent: Span) -> asyncio.Future[RecordMetadata]:
        batch = ready.mapping.batch
        key = str(batch.connection.connection_id)
        headers: list[tuple[str, bytes]] = [("poscal-event-id", str(batch.event_id).encode())]
        span = start_send_span(
            self._topic, key, headers, parent, attributes={"poscal.fills": len(batch.fills)}
        )
        try:
            delivery: asyncio.Future[RecordMetadata] = await self._producer.send(
                self._topic, ready.value, key=key.encode(), headers=headers
            )
        except Exception as exc:
            _end_failed(span, exc)
            if refused_for_its_content(exc):
                # Refused before it was sent: settle it as a failed delivery of this record.
                refused: asyncio.Future[RecordMetadata] = asyncio.get_running_loop().create_future()
                refused.set_exception(exc)
                return refused
            raise TransientError(f"canonical batch not enqueued: {exc!r}") from exc
        except BaseException as exc:  # cancelled while waiting for buffer space
            _end_failed(span, exc)
            raise
        delivery.add_done_callback(partial(_end_on_delivery, span))
        return delivery

    async def healthy(self) -> bool:
        """Whether the broker takes canonical batches and dead letters now."""
        return await kafka_answers(self._producer, [self._topic]) and (
            await self._dead_letters.reachable()
        )

    async def give_up(self, record: ConsumerRecord, reason: str) -> None:
        """Dead-letter a record that kept failing while the broker was up."""
        await self._dead_letters.reject(record, "retry_budget_exhausted", reason)


def _described(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {safe_text(str(exc), 1000)}"


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
