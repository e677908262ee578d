"""Fixtures integration specs share: a fresh user with one MT5 demo connection, an HTTP client
for the specs that talk to local fake brokers, and in-process ingest apps with a recording sink."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import httpx
import pytest

from services.shared.vault import CredentialVault
from tests.support.builders import TestConnection, new_connection
from tests.support.ingest import IngestStarter, RecordingSink


@pytest.fixture
async def connection(pool: asyncpg.Pool, vault: CredentialVault) -> TestConnection:
    async with pool.acquire() as conn:
        return await new_connection(conn, vault)


@pytest.fixture(scope="module")
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=5.0) as client:
        yield client


@pytest.fixture
def sink() -> RecordingSink:
    """What the in-process ingest apps of a test would have published to Kafka."""
    return RecordingSink()


@pytest.fixture
def ingest_with(
    pool: asyncpg.Pool,
    vault: CredentialVault,
    master_key: str,
    database_url: str,
    sink: RecordingSink,
) -> IngestStarter:
    """`async with ingest_with(**settings) as ingest:` an ingest app publishing to `sink`."""
    return IngestStarter(pool, vault, master_key, database_url, sink)
