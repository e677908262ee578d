"""The consume loop both consumers share: fetch a batch, let the handler make it durable, then
commit `offset + 1`. Committing is this loop's job, never the handler's, and never automatic.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Protocol

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError

from services.shared.backoff import Backoff
from services.shared.errors import TransientError
from services.shared.kafka import next_offsets
from services.shared.logging import get_logger

_log = get_logger("poscal.consuming")


class BatchHandler(Protocol):
    async def handle(self, records: Sequence[ConsumerRecord]) -> None:
        """Make every record's effect durable, or raise TransientError to get them again."""


def _rewind(consumer: AIOKafkaConsumer, records: Sequence[ConsumerRecord]) -> None:
    first: dict[TopicPartition, int] = {}
    for record in records:
        tp = TopicPartition(record.topic, record.partition)
        first[tp] = min(first.get(tp, record.offset), record.offset)
    assigned = consumer.assignment()
    for tp, offset in first.items():
        if tp in assigned:
            consumer.seek(tp, offset)


async def consume_batches(
    consumer: AIOKafkaConsumer,
    handler: BatchHandler,
    stop: asyncio.Event,
    *,
    max_records: int,
    poll_timeout_ms: int = 250,
    backoff: Backoff | None = None,
) -> None:
    backoff = backoff or Backoff()
    while not stop.is_set():
        fetched = await consumer.getmany(timeout_ms=poll_timeout_ms, max_records=max_records)
        records = [record for batch in fetched.values() for record in batch]
        if not records:
            continue
        try:
            await handler.handle(records)
        except TransientError as exc:
            delay = backoff.next_delay()
            _log.warning("batch failed, retrying", error=str(exc), retry_in_s=round(delay, 3))
            _rewind(consumer, records)
            await asyncio.sleep(delay)
            continue
        backoff.reset()
        try:
            await consumer.commit(next_offsets(records))
        except (CommitFailedError, KafkaError) as exc:
            # Partitions moved to another consumer: it will see these records again, and the
            # sinks are idempotent, so redelivery is harmless.
            _log.warning("offset commit failed; records will be redelivered", error=repr(exc))
