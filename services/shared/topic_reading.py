"""Reading a whole topic, from each partition's start to its end, without joining a group.

A partition's end is the high watermark that fetch responses report, never `end_offsets()`: the
embedded broker (tansu) answers ListOffsets "latest" with the first offset of the partition's
last batch + 1, short of the end whenever that batch holds more than one record. Apache Kafka
reports the same high watermark in its fetch responses, so this reads both alike.
"""

from __future__ import annotations

import asyncio
import time

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition


class TopicNotFound(LookupError):
    """The broker knows no such topic (or it has no partitions yet)."""


async def read_to_end(
    bootstrap_servers: str, topic: str, *, timeout_seconds: float = 60.0
) -> list[ConsumerRecord]:
    """Every record of `topic` up to the ends reported after the call began, by partition and
    offset. TimeoutError if that takes over `timeout_seconds`; TopicNotFound for no topic."""
    deadline = time.monotonic() + timeout_seconds
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap_servers,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        client_id="poscal-topic-reader",
    )
    await consumer.start()
    try:
        partitions = await topic_partitions(consumer, topic, deadline)
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        records: list[ConsumerRecord] = []
        while not await at_high_watermark(consumer, partitions):
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{topic}: not read to its end within {timeout_seconds:.0f}s"
                    f" ({len(records)} records read)"
                )
            fetched = await consumer.getmany(timeout_ms=200)
            records += [record for batch in fetched.values() for record in batch]
        return sorted(records, key=lambda r: (r.partition, r.offset))
    finally:
        await consumer.stop()


async def topic_partitions(
    consumer: AIOKafkaConsumer, topic: str, deadline: float, attempts: int = 20
) -> list[TopicPartition]:
    """The topic's partitions. Metadata may not name a topic at the first ask (a broker or a
    topic just created): asked again up to `attempts` times before the (monotonic) deadline,
    then TopicNotFound."""
    for _ in range(attempts):
        partitions = consumer.partitions_for_topic(topic)
        if partitions:
            return [TopicPartition(topic, p) for p in sorted(partitions)]
        if time.monotonic() > deadline:
            break
        await consumer._client.force_metadata_update()
        await asyncio.sleep(0.05)
    raise TopicNotFound(f"no topic {topic!r} on the broker")


async def at_high_watermark(consumer: AIOKafkaConsumer, partitions: list[TopicPartition]) -> bool:
    """Whether every partition has been read up to the high watermark a fetch reported."""
    for tp in partitions:
        highwater = consumer.highwater(tp)
        if highwater is None or await consumer.position(tp) < highwater:
            return False
    return True
