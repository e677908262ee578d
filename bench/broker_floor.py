"""The broker's own rates on this machine, in the same run: how fast one producer with batching
can write records the size of the pipeline's, and one consumer fetching in batches can read them
back. What any pipeline through this broker can at best reach."""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, TopicPartition

from services.shared.kafka import TopicSpec, create_producer, ensure_topics


@dataclass(frozen=True)
class BrokerFloor:
    records: int
    produce_per_s: float
    consume_per_s: float


async def _produce(bootstrap: str, topic: str, values: list[bytes]) -> float:
    # The pipeline's own producer settings (acks=all, linger 2 ms); sends left in flight
    # together, so the producer batches them per partition.
    producer = create_producer(bootstrap, "bench-floor")
    await producer.start()
    try:
        started = time.perf_counter()
        pending = [
            await producer.send(topic, value, key=str(i % 20).encode())
            for i, value in enumerate(values)
        ]
        await asyncio.gather(*pending)
        return len(values) / (time.perf_counter() - started)
    finally:
        await producer.stop()


async def _consume(bootstrap: str, topic: str, partitions: int, expect: int) -> float:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        assigned = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(assigned)
        await consumer.seek_to_beginning(*assigned)
        received = 0
        started = time.perf_counter()
        while received < expect:
            fetched = await consumer.getmany(timeout_ms=1000, max_records=2000)
            if not fetched and time.perf_counter() - started > 60:
                raise TimeoutError(f"read {received} of {expect} records back")
            received += sum(len(batch) for batch in fetched.values())
        return received / (time.perf_counter() - started)
    finally:
        await consumer.stop()


async def measure_broker_floor(
    bootstrap: str, values: list[bytes], partitions: int = 6
) -> BrokerFloor:
    """Produce `values` to a topic of their own, then read them all back."""
    topic = f"bench.floor.{uuid.uuid4().hex[:8]}"
    await ensure_topics(bootstrap, [TopicSpec(topic, partitions)])
    produced = await _produce(bootstrap, topic, values)
    consumed = await _consume(bootstrap, topic, partitions, len(values))
    return BrokerFloor(len(values), round(produced, 1), round(consumed, 1))
