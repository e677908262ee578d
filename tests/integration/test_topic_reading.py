"""The test helpers that read topics and consumer groups, against the real broker: a topic is read
to its real end however its records were batched (the embedded broker's "latest offset" stops at
the start of the last batch), and a group has consumed a topic only once it committed its end."""

from __future__ import annotations

import asyncio
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition

from services.shared.kafka import TopicSpec, ensure_topics
from tests.support.kafka import (
    committed_offsets,
    partition_ends,
    read_topic,
    wait_until_consumed,
)

pytestmark = pytest.mark.integration

PARTITIONS = 3
# Per partition: single-record batches and bursts of several, ending on a burst, so that the
# last batch of every partition starts well before the partition's end.
BATCH_SIZES = (1, 4, 1, 1, 3)


@pytest.fixture
async def topic(kafka_bootstrap: str) -> str:
    name = f"test.{uuid.uuid4().hex[:8]}.reading"
    await ensure_topics(kafka_bootstrap, [TopicSpec(name, PARTITIONS)])
    return name


@pytest.fixture
async def producer(kafka_bootstrap: str) -> AsyncIterator[AIOKafkaProducer]:
    # A long linger keeps each burst in one batch: the producer sends it as one.
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all", linger_ms=200)
    await producer.start()
    yield producer
    await producer.stop()


async def produce_in_batches(producer: AIOKafkaProducer, topic: str) -> dict[int, list[bytes]]:
    """BATCH_SIZES records per partition, each batch acknowledged before the next is sent."""
    sent: dict[int, list[bytes]] = defaultdict(list)
    for number, size in enumerate(BATCH_SIZES):
        values = {
            p: [f"p{p} batch {number} record {i}".encode() for i in range(size)]
            for p in range(PARTITIONS)
        }
        pending = [
            await producer.send(topic, value, partition=p)
            for p in range(PARTITIONS)
            for value in values[p]
        ]
        await asyncio.gather(*pending)
        for p in range(PARTITIONS):
            sent[p] += values[p]
    return dict(sent)


def by_partition(records: list[ConsumerRecord]) -> dict[int, list[bytes]]:
    found: dict[int, list[bytes]] = defaultdict(list)
    for record in records:
        found[record.partition].append(record.value)
    return dict(found)


async def test_a_topic_is_read_to_its_end_however_its_records_were_batched(
    kafka_bootstrap: str, topic: str, producer: AIOKafkaProducer
) -> None:
    sent = await produce_in_batches(producer, topic)

    records = await read_topic(kafka_bootstrap, topic)

    assert by_partition(records) == sent  # every record, once, in order within its partition
    assert [r.offset for r in records if r.partition == 0] == list(range(sum(BATCH_SIZES)))


async def test_a_partitions_end_is_the_offset_after_its_last_record(
    kafka_bootstrap: str, topic: str, producer: AIOKafkaProducer
) -> None:
    await produce_in_batches(producer, topic)

    ends = await partition_ends(kafka_bootstrap, topic)

    assert ends == {TopicPartition(topic, p): sum(BATCH_SIZES) for p in range(PARTITIONS)}


async def test_an_empty_topic_reads_as_nothing(kafka_bootstrap: str, topic: str) -> None:
    assert await read_topic(kafka_bootstrap, topic) == []
    assert set((await partition_ends(kafka_bootstrap, topic)).values()) == {0}


async def test_a_reader_waits_for_the_records_it_expects_and_then_reads_to_the_end(
    kafka_bootstrap: str, topic: str, producer: AIOKafkaProducer
) -> None:
    expected = PARTITIONS * sum(BATCH_SIZES)
    reading = asyncio.create_task(read_topic(kafka_bootstrap, topic, expect=expected))

    sent = await produce_in_batches(producer, topic)

    assert by_partition(await reading) == sent


async def test_a_reader_that_never_gets_what_it_expects_says_so(
    kafka_bootstrap: str, topic: str, producer: AIOKafkaProducer
) -> None:
    await producer.send_and_wait(topic, b"only one", partition=0)

    with pytest.raises(TimeoutError, match="1 records read, 2 expected"):
        await read_topic(kafka_bootstrap, topic, expect=2, wait_seconds=1)


async def test_a_group_has_consumed_a_topic_once_it_committed_every_partitions_end(
    kafka_bootstrap: str, topic: str, producer: AIOKafkaProducer
) -> None:
    await produce_in_batches(producer, topic)
    group = f"reading-{topic}"
    end = sum(BATCH_SIZES)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=kafka_bootstrap, group_id=group, enable_auto_commit=False
    )
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        consumer.assign(partitions)
        # One record short of the end on the last partition: not consumed yet.
        await consumer.commit({tp: end for tp in partitions[:-1]} | {partitions[-1]: end - 1})
        assert await committed_offsets(kafka_bootstrap, group, topic) == {
            **{tp: end for tp in partitions[:-1]},
            partitions[-1]: end - 1,
        }
        with pytest.raises(TimeoutError):
            await wait_until_consumed(kafka_bootstrap, (group, topic), wait_seconds=1)

        await consumer.commit({partitions[-1]: end})
        await wait_until_consumed(kafka_bootstrap, (group, topic))
    finally:
        await consumer.stop()
