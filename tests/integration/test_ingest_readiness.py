"""Ingest's readiness, the real check against the real servers: ready while Postgres and Kafka
both answer, not ready as soon as either is gone (while /healthz stays up)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import asyncpg
import httpx
import pytest
from aiokafka import AIOKafkaProducer

from services.devstack.broker import EmbeddedBroker
from services.devstack.postgres import EmbeddedPostgres
from services.ingest.app import create_app
from services.ingest.bootstrap import IngestWiring, wire
from services.ingest.readiness import DependencyReadiness
from services.shared.database import create_pool
from services.shared.kafka import create_producer, started
from services.shared.vault import CredentialVault
from tests.support.ingest import RecordingSink, ingest_settings

pytestmark = pytest.mark.integration


@contextlib.asynccontextmanager
async def _producer(bootstrap: str) -> AsyncIterator[AIOKafkaProducer]:
    producer = await started(create_producer(bootstrap, "test-readiness"))
    try:
        yield producer
    finally:
        await producer.stop()


async def test_ready_while_postgres_and_kafka_both_answer(
    pool: asyncpg.Pool, kafka_bootstrap: str
) -> None:
    async with _producer(kafka_bootstrap) as producer:
        assert await DependencyReadiness(pool, producer)() is True


async def test_not_ready_once_the_broker_is_gone(pool: asyncpg.Pool) -> None:
    with EmbeddedBroker() as broker:
        async with _producer(broker.bootstrap_servers) as producer:
            readiness = DependencyReadiness(pool, producer, timeout_seconds=2)
            assert await readiness() is True
            broker.stop()
            assert await readiness() is False


async def test_not_ready_once_postgres_is_gone(kafka_bootstrap: str) -> None:
    with EmbeddedPostgres() as postgres:
        own = await create_pool(postgres.dsn, min_size=1, max_size=1)
        try:
            async with _producer(kafka_bootstrap) as producer:
                readiness = DependencyReadiness(own, producer, timeout_seconds=2)
                assert await readiness() is True
                postgres.stop()
                assert await readiness() is False
        finally:
            own.terminate()


async def test_readyz_answers_from_the_real_check_and_healthz_stays_up(
    pool: asyncpg.Pool, vault: CredentialVault, master_key: str, database_url: str
) -> None:
    settings = ingest_settings(master_key, database_url)
    with EmbeddedBroker() as broker:
        async with _producer(broker.bootstrap_servers) as producer:

            async def build(_: contextlib.AsyncExitStack) -> IngestWiring:
                return wire(
                    settings,
                    pool,
                    vault,
                    RecordingSink(),
                    listen_for_changes=False,
                    ready=DependencyReadiness(pool, producer, timeout_seconds=2),
                )

            app = create_app(settings, build)
            async with (
                app.router.lifespan_context(app),
                httpx.AsyncClient(
                    transport=httpx.ASGITransport(app=app), base_url="http://ingest"
                ) as client,
            ):
                ready = await client.get("/readyz")
                broker.stop()
                gone = await client.get("/readyz")
                alive = await client.get("/healthz")
    assert (ready.status_code, ready.json()) == (200, {"status": "ready"})
    assert (gone.status_code, gone.json()) == (503, {"status": "unavailable"})
    assert alive.status_code == 200
