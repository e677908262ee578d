"""Everything on a topic right now, read to the end of each partition without joining a group."""

from __future__ import annotations

import asyncio
import time

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition


async def every_record(
    bootstrap: str, topic: str, wait_seconds: float = 30.0
) -> list[ConsumerRecord]:
    """Each record from the start of every partition up to its end offset as of the call."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        deadline = time.monotonic() + wait_seconds
        partitions = consumer.partitions_for_topic(topic) or set()
        while not partitions:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no partitions for topic {topic}")
            await consumer._client.force_metadata_update()
            partitions = consumer.partitions_for_topic(topic) or set()
            await asyncio.sleep(0.05)
        assigned = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(assigned)
        ends: dict[TopicPartition, int] = await consumer.end_offsets(assigned)
        await consumer.seek_to_beginning(*assigned)
        records: list[ConsumerRecord] = []
        unread = {tp for tp in assigned if ends[tp] > 0}
        while unread:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{topic} not read to its end within {wait_seconds}s")
            fetched = await consumer.getmany(*unread, timeout_ms=200)
            for partition, batch in fetched.items():
                records += [r for r in batch if r.offset < ends[partition]]
            for partition in list(unread):
                if await consumer.position(partition) >= ends[partition]:
                    unread.discard(partition)
        return records
    finally:
        await consumer.stop()
