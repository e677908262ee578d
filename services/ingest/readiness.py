"""Whether this replica can take webhooks now: Postgres and Kafka both answer a round trip."""

from __future__ import annotations

import asyncio

import asyncpg
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from services.ingest.database_calls import DATABASE_FAILURES


class DependencyReadiness:
    """`await readiness()`: True when both answer within the timeout. Each call asks them
    afresh (what a load balancer's probe needs), so a cached view of the cluster can never
    report a broker that went away as ready."""

    def __init__(
        self, pool: asyncpg.Pool, producer: AIOKafkaProducer, timeout_seconds: float = 2.0
    ) -> None:
        self._pool = pool
        self._producer = producer
        self._timeout = timeout_seconds

    async def __call__(self) -> bool:
        postgres, kafka = await asyncio.gather(self._postgres_answers(), self._kafka_answers())
        return postgres and kafka

    async def _postgres_answers(self) -> bool:
        try:
            async with asyncio.timeout(self._timeout):
                return bool(await self._pool.fetchval("SELECT 1"))
        except DATABASE_FAILURES:
            return False

    async def _kafka_answers(self) -> bool:
        try:
            async with asyncio.timeout(self._timeout):
                # A metadata request to a known broker: a real round trip, which leaves the
                # producer's own view of the cluster as it is.
                await self._producer.client.fetch_all_metadata()
        except (KafkaError, OSError, TimeoutError):
            return False
        return True
