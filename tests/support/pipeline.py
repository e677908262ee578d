"""The normalizer and writer consume loops running in-process against the real broker and DB."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import asyncpg
from aiokafka import AIOKafkaProducer

from services.normalizer.pipeline import Normalizer
from services.shared.consuming import consume_batches
from services.shared.dead_letters import DeadLetterBudget, DeadLetterPublisher
from services.shared.envelope import RawEvent
from services.shared.kafka import create_consumer, create_producer
from services.shared.settings import Topics
from services.writer.pipeline import Writer
from services.writer.repository import JournalRepository
from tests.support.kafka import wait_until_consumed


@dataclass
class RunningPipeline:
    bootstrap: str
    producer: AIOKafkaProducer
    topics: Topics
    normalizer_group: str
    writer_group: str

    async def send_raw(self, event: RawEvent) -> None:
        await self.producer.send_and_wait(
            self.topics.raw,
            event.model_dump_json().encode(),
            key=str(event.connection.connection_id).encode(),
        )

    async def send_bytes(self, value: bytes, key: bytes = b"garbage") -> None:
        await self.producer.send_and_wait(self.topics.raw, value, key=key)

    async def caught_up(self) -> None:
        """Until everything sent so far has been through both stages: the normalizer has
        committed all of the raw topic, then the writer all of the canonical one."""
        await wait_until_consumed(
            self.bootstrap,
            (self.normalizer_group, self.topics.raw),
            (self.writer_group, self.topics.canonical),
        )


@contextlib.asynccontextmanager
async def running_pipeline(
    bootstrap: str,
    pool: asyncpg.Pool,
    topics: Topics,
    repository: JournalRepository | None = None,
) -> AsyncIterator[RunningPipeline]:
    suffix = uuid.uuid4().hex[:8]
    normalizer_group, writer_group = f"normalizer-{suffix}", f"writer-{suffix}"
    stop = asyncio.Event()
    producer = create_producer(bootstrap, "test-pipeline")
    await producer.start()
    raw_consumer = create_consumer(bootstrap, topics.raw, normalizer_group, "t-n", 2000, 20)
    canonical_consumer = create_consumer(bootstrap, topics.canonical, writer_group, "t-w", 2000, 20)
    await asyncio.gather(raw_consumer.start(), canonical_consumer.start())
    normalizer = Normalizer(
        producer,
        topics.canonical,
        DeadLetterPublisher(producer, topics.dead_letter, "normalizer", DeadLetterBudget(100)),
        normalizer_group,
    )
    writer = Writer(
        pool,
        repository or JournalRepository(),
        DeadLetterPublisher(producer, topics.dead_letter, "writer", DeadLetterBudget(100)),
        writer_group,
    )
    tasks = [
        asyncio.create_task(consume_batches(raw_consumer, normalizer, stop, max_records=50)),
        asyncio.create_task(consume_batches(canonical_consumer, writer, stop, max_records=50)),
    ]
    try:
        yield RunningPipeline(bootstrap, producer, topics, normalizer_group, writer_group)
    finally:
        stop.set()
        await asyncio.gather(*tasks)
        await asyncio.gather(raw_consumer.stop(), canonical_consumer.stop())
        await producer.stop()
