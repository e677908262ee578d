"""Fixtures integration specs share: a fresh user with one MT5 demo connection, and an HTTP
client for the specs that talk to local fake brokers."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import httpx
import pytest

from services.shared.vault import CredentialVault
from tests.support.builders import TestConnection, new_connection


@pytest.fixture
async def connection(pool: asyncpg.Pool, vault: CredentialVault) -> TestConnection:
    async with pool.acquire() as conn:
        return await new_connection(conn, vault)


@pytest.fixture(scope="module")
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=5.0) as client:
        yield client
