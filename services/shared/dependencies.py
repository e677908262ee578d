"""A service's connections to Postgres and Kafka, made patiently: started while either is away,
the service waits (logging what for, never a credential) until it answers or it is told to stop.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import asyncpg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from services.shared.database import (
    POSTGRES_MISCONFIGURED,
    POSTGRES_UNREACHABLE,
    create_pool,
    dsn_address,
)
from services.shared.kafka import (
    KAFKA_UNREACHABLE,
    Client,
    create_consumer,
    create_producer,
    started,
)
from services.shared.lifecycle import connect_backoff, connect_with_retry
from services.shared.settings import ServiceSettings

T = TypeVar("T")


class Dependencies:
    """Each connection, once made, is closed when `stack` unwinds; each wait raises
    StoppedWaiting once `stop` is set."""

    def __init__(
        self, settings: ServiceSettings, stop: asyncio.Event, stack: contextlib.AsyncExitStack
    ) -> None:
        self._settings = settings
        self._stop = stop
        self._stack = stack

    async def postgres(self, **pool_options: Any) -> asyncpg.Pool:
        dsn = self._settings.database_url.get_secret_value()
        pool = await self.with_postgres(lambda: create_pool(dsn, **pool_options))
        self._stack.push_async_callback(pool.close)
        return pool

    async def with_postgres(self, connect: Callable[[], Awaitable[T]]) -> T:
        """`connect()` (anything that needs Postgres to answer), retried while it is away."""
        return await connect_with_retry(
            "postgres",
            dsn_address(self._settings.database_url.get_secret_value()),
            connect,
            self._stop,
            unreachable=POSTGRES_UNREACHABLE,
            misconfigured=POSTGRES_MISCONFIGURED,
            backoff=connect_backoff(self._settings.connect_retry_cap_seconds),
        )

    async def producer(self, client_id: str) -> AIOKafkaProducer:
        bootstrap = self._settings.kafka_bootstrap_servers
        producer = await self._kafka(lambda: started(create_producer(bootstrap, client_id)))
        self._stack.push_async_callback(producer.stop)
        return producer

    async def consumer(self, topic: str, group_id: str, client_id: str) -> AIOKafkaConsumer:
        """Started means joined its group: the consumer has its partitions."""
        settings = self._settings
        consumer = await self._kafka(
            lambda: started(
                create_consumer(
                    settings.kafka_bootstrap_servers,
                    topic,
                    group_id,
                    client_id,
                    settings.kafka_session_timeout_ms,
                    settings.kafka_fetch_max_wait_ms,
                )
            )
        )
        self._stack.push_async_callback(consumer.stop)
        return consumer

    async def _kafka(self, connect: Callable[[], Awaitable[Client]]) -> Client:
        return await connect_with_retry(
            "kafka",
            self._settings.kafka_bootstrap_servers,
            connect,
            self._stop,
            unreachable=KAFKA_UNREACHABLE,
            backoff=connect_backoff(self._settings.connect_retry_cap_seconds),
        )
