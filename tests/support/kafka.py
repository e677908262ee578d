"""Reading topics and consumer groups in tests, without joining a group (which is slow).

A partition's end is the high watermark that fetch responses report, never `end_offsets()`: the
embedded broker (tansu) answers ListOffsets "latest" with the first offset of the partition's
last batch + 1, which falls short of the end whenever that batch holds more than one record.
Apache Kafka reports the same high watermark in its fetch responses, so this reads both alike.
"""

from __future__ import annotations

import asyncio
import sys
import time

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

from services.shared.topic_reading import at_high_watermark, topic_partitions

# How long reading a topic to its end may take at most (a bound for failing, not a wait).
READ_SECONDS = 30.0


async def read_topic(
    bootstrap: str, topic: str, *, expect: int = 0, wait_seconds: float = 30.0
) -> list[ConsumerRecord]:
    """Every record on `topic`, each partition read from its start to its end, once at least
    `expect` records are there. TimeoutError if they are not within `wait_seconds` (which bounds
    only that wait: reading what is there to its end is not cut short by it).

    The ends are high watermarks reported after the call began, so every record produced before
    the call is included (and perhaps some produced while reading).
    """
    started = time.monotonic()
    enough_by, give_up = started + wait_seconds, started + max(wait_seconds, READ_SECONDS)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        partitions = await _partitions(consumer, topic, give_up)
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        records: list[ConsumerRecord] = []
        while True:
            fetched = await consumer.getmany(timeout_ms=100)
            records += [record for batch in fetched.values() for record in batch]
            at_end = await at_high_watermark(consumer, partitions)
            if at_end and len(records) >= expect:
                return records
            now = time.monotonic()
            if (at_end and now > enough_by) or now > give_up:
                raise TimeoutError(
                    f"{topic}: {len(records)} records read, {expect} expected, after"
                    f" {now - started:.1f}s (read to its end: {at_end})"
                )
    finally:
        await consumer.stop()


async def partition_ends(
    bootstrap: str, topic: str, wait_seconds: float = READ_SECONDS
) -> dict[TopicPartition, int]:
    """Each partition's end (the offset the next record will get), as fetch responses say."""
    deadline = time.monotonic() + wait_seconds
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = await _partitions(consumer, topic, deadline)
        consumer.assign(partitions)
        # Fetching from "latest" (too early on tansu, but never past the end) is enough to be
        # told every partition's high watermark; the records themselves are not needed.
        await consumer.seek_to_end(*partitions)
        while any(consumer.highwater(tp) is None for tp in partitions):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{topic}: no fetch response within {wait_seconds}s")
            await consumer.getmany(timeout_ms=100)
        return {tp: consumer.highwater(tp) for tp in partitions}
    finally:
        await consumer.stop()


async def committed_offsets(bootstrap: str, group: str, topic: str) -> dict[TopicPartition, int]:
    """A group's committed offset of each of the topic's partitions (0 where none is)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False
    )
    await consumer.start()
    try:
        partitions = await _partitions(consumer, topic, time.monotonic() + READ_SECONDS)
        return {tp: await consumer.committed(tp) or 0 for tp in partitions}
    finally:
        await consumer.stop()


async def committed_offset(bootstrap: str, group: str, topic: str) -> int:
    """The sum of a group's committed offsets over the topic's partitions (0 if none)."""
    return sum((await committed_offsets(bootstrap, group, topic)).values())


async def wait_until_consumed(
    bootstrap: str, *stages: tuple[str, str], wait_seconds: float = 30.0
) -> None:
    """Until each `(group, topic)` stage, in order, has committed everything on its topic.

    In order, so that a stage's topic is measured only once the stage before it has finished
    producing to it (a consumer commits only after what it produced is acknowledged).
    """
    deadline = time.monotonic() + wait_seconds
    for group, topic in stages:
        ends = await partition_ends(bootstrap, topic)
        consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False
        )
        await consumer.start()
        try:
            while True:
                committed = {tp: await consumer.committed(tp) or 0 for tp in ends}
                if all(committed[tp] >= end for tp, end in ends.items()):
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"{group} has committed {committed} of {topic}, whose ends are {ends},"
                        f" after {wait_seconds}s"
                    )
                await asyncio.sleep(0.1)
        finally:
            await consumer.stop()


async def _partitions(
    consumer: AIOKafkaConsumer, topic: str, deadline: float
) -> list[TopicPartition]:
    # A test's topic is created just before it is read: wait for it until the deadline.
    return await topic_partitions(consumer, topic, deadline, attempts=sys.maxsize)
