"""A started producer and group consumer of one topic, for specs that run a consume loop against
the real broker: on the way out the loop is told to stop and both clients are stopped."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import NamedTuple

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from services.shared.kafka import create_consumer, create_producer


class ConsumingClients(NamedTuple):
    producer: AIOKafkaProducer
    consumer: AIOKafkaConsumer
    stop: asyncio.Event  # for the consume loop under test: set on the way out


@contextlib.asynccontextmanager
async def consuming_clients(
    bootstrap: str, topic: str, group: str
) -> AsyncIterator[ConsumingClients]:
    """`async with consuming_clients(...) as (producer, consumer, stop):`, the consumer in
    `group` with a short session and fetch wait, so that specs start consuming quickly."""
    producer = create_producer(bootstrap, f"test-{group}")
    consumer = create_consumer(bootstrap, topic, group, "t", 2000, 20)
    await asyncio.gather(producer.start(), consumer.start())
    stop = asyncio.Event()
    try:
        yield ConsumingClients(producer, consumer, stop)
    finally:
        stop.set()
        await asyncio.gather(consumer.stop(), producer.stop())
