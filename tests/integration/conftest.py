"""Fixtures every integration spec shares: a fresh user with one MT5 demo connection."""

from __future__ import annotations

import asyncpg
import pytest

from services.shared.vault import CredentialVault
from tests.support.builders import TestConnection, new_connection


@pytest.fixture
async def connection(pool: asyncpg.Pool, vault: CredentialVault) -> TestConnection:
    async with pool.acquire() as conn:
        return await new_connection(conn, vault)
