"""Whether this replica can take webhooks now: Postgres and Kafka both answer a round trip."""

from __future__ import annotations

import asyncio

import asyncpg
from aiokafka import AIOKafkaProducer

from services.shared.probes import kafka_answers, postgres_answers


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
        postgres, kafka = await asyncio.gather(
            postgres_answers(self._pool, self._timeout),
            kafka_answers(self._producer, within_seconds=self._timeout),
        )
        return postgres and kafka
