"""Reading topics in tests without joining a group (which is slow): assign and read."""

from __future__ import annotations

import asyncio
import time

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition


async def read_topic(
    bootstrap: str, topic: str, *, expect: int, wait_seconds: float = 10.0
) -> list[ConsumerRecord]:
    """Every record on `topic`, once at least `expect` are there (or the wait ran out)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = consumer.partitions_for_topic(topic) or set()
        for _ in range(50):
            if partitions:
                break
            await consumer._client.force_metadata_update()
            partitions = consumer.partitions_for_topic(topic) or set()
            await asyncio.sleep(0.05)
        assigned = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(assigned)
        await consumer.seek_to_beginning(*assigned)
        records: list[ConsumerRecord] = []
        deadline = time.monotonic() + wait_seconds
        while time.monotonic() < deadline:
            fetched = await consumer.getmany(timeout_ms=100)
            records += [r for batch in fetched.values() for r in batch]
            if len(records) >= expect and expect > 0:
                break
        return records
    finally:
        await consumer.stop()


async def committed_offset(bootstrap: str, group: str, topic: str) -> int:
    """The sum of a group's committed offsets over the topic's partitions (0 if none)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False
    )
    await consumer.start()
    try:
        total = 0
        for partition in consumer.partitions_for_topic(topic) or set():
            total += await consumer.committed(TopicPartition(topic, partition)) or 0
        return total
    finally:
        await consumer.stop()
