"""Whether a dependency answers now: one real round trip, bounded in time; never raises. Asked by
readiness probes, and by consumers before they take a failure for an outage or a record's own."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

import asyncpg
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError

PROBE_TIMEOUT_SECONDS = 2.0


async def postgres_answers(
    pool: asyncpg.Pool, within_seconds: float = PROBE_TIMEOUT_SECONDS
) -> bool:
    try:
        async with asyncio.timeout(within_seconds):
            return bool(await pool.fetchval("SELECT 1"))
    except Exception:  # whatever it is, Postgres did not answer
        return False


async def kafka_answers(
    producer: AIOKafkaProducer,
    topics: Iterable[str] = (),
    within_seconds: float = PROBE_TIMEOUT_SECONDS,
) -> bool:
    """A metadata request to a known broker (which leaves the producer's own view of the
    cluster as it is), and every partition of `topics` has a leader."""
    try:
        async with asyncio.timeout(within_seconds):
            cluster = await producer.client.fetch_all_metadata()
    except (KafkaError, OSError, TimeoutError):
        return False
    for topic in topics:
        partitions = cluster.partitions_for_topic(topic)
        if not partitions:
            return False
        for partition in partitions:
            if cluster.leader_for_partition(TopicPartition(topic, partition)) in (None, -1):
                return False
    return True
