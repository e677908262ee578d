"""Secrets at rest and row-level security against the real database."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import orjson
import pytest

from services.cli.connections import ConnectionRefused, create_connection
from services.ingest.connections import WEBHOOK_SECRET_KIND
from services.ingest.signatures import decode_secret
from services.shared.crypto import DecryptionFailed, LocalKeyEncryptionKey, new_master_key_base64
from services.shared.database import Connection
from services.shared.migrations import apply_migrations
from services.shared.vault import CredentialVault
from tests.support.builders import SERVER, TestConnection, new_connection

pytestmark = pytest.mark.integration


@pytest.fixture
async def connection(pool: asyncpg.Pool, vault: CredentialVault) -> TestConnection:
    async with pool.acquire() as conn:
        return await new_connection(conn, vault)


async def test_the_webhook_secret_is_stored_only_as_ciphertext_and_opens_for_its_connection(
    pool: asyncpg.Pool, vault: CredentialVault, connection: TestConnection
) -> None:
    key = decode_secret(connection.created.webhook_secret)
    async with pool.acquire() as conn:
        assert await vault.open_active(
            conn, connection.created.connection_id, WEBHOOK_SECRET_KIND, datetime.now(UTC)
        ) == [key]
        ciphertext: bytes = await conn.fetchval(
            "SELECT ciphertext FROM mt5_credentials WHERE connection_id = $1",
            connection.created.connection_id,
        )
    assert key not in ciphertext
    assert connection.created.webhook_secret.encode() not in ciphertext


async def test_a_ciphertext_moved_to_another_connection_or_opened_with_another_key_fails(
    pool: asyncpg.Pool, vault: CredentialVault, connection: TestConnection
) -> None:
    now = datetime.now(UTC)
    async with pool.acquire() as conn:
        stranger = CredentialVault(LocalKeyEncryptionKey.from_base64(new_master_key_base64()))
        with pytest.raises(DecryptionFailed):
            await stranger.open_active(
                conn, connection.created.connection_id, WEBHOOK_SECRET_KIND, now
            )
        other = await new_connection(conn, vault)
        moved = await conn.execute(
            "UPDATE mt5_credentials SET connection_id = $1 WHERE connection_id = $2",
            other.created.connection_id,
            connection.created.connection_id,
        )
        assert moved == "UPDATE 1"
        with pytest.raises(DecryptionFailed):
            await vault.open_active(conn, other.created.connection_id, WEBHOOK_SECRET_KIND, now)


async def test_expired_credentials_are_not_used(
    pool: asyncpg.Pool, vault: CredentialVault, connection: TestConnection
) -> None:
    async with pool.acquire() as conn:
        await conn.execute(
            "UPDATE mt5_credentials SET expires_at = now() - interval '1 second'"
            " WHERE connection_id = $1",
            connection.created.connection_id,
        )
        assert (
            await vault.open_active(
                conn,
                connection.created.connection_id,
                WEBHOOK_SECRET_KIND,
                datetime.now(UTC) + timedelta(seconds=1),
            )
            == []
        )


async def test_a_broker_account_can_be_connected_only_once(
    pool: asyncpg.Pool, vault: CredentialVault, connection: TestConnection
) -> None:
    async with pool.acquire() as conn:
        with pytest.raises(ConnectionRefused, match="already connected"):
            await create_connection(
                conn,
                vault,
                user_id=connection.user_id,
                broker="mt5",
                connection_type="demo",
                account_number=str(connection.login),
                server=SERVER,
                label="again",
                ingest_url="http://x",
            )


async def test_migrations_apply_once(database_url: str) -> None:
    assert await apply_migrations(database_url) == []


async def _as_user(conn: Connection, user_id: uuid.UUID) -> None:
    await conn.execute("SET LOCAL ROLE authenticated")
    await conn.execute(
        "SELECT set_config('request.jwt.claims', $1, true)",
        orjson.dumps({"sub": str(user_id), "role": "authenticated"}).decode(),
    )


async def test_authenticated_users_see_and_change_only_their_own_rows(
    pool: asyncpg.Pool, vault: CredentialVault
) -> None:
    async with pool.acquire() as conn:
        alice = await new_connection(conn, vault)
        bob = await new_connection(conn, vault)
        for owner in (alice, bob):
            await conn.execute(
                "INSERT INTO trading_journal (user_id, account_id, symbol, side, status)"
                " VALUES ($1, $2, 'EURUSD', 'buy', 'open')",
                owner.user_id,
                owner.created.account_id,
            )
        async with conn.transaction():
            await _as_user(conn, alice.user_id)
            assert await conn.fetchval("SELECT auth.uid()") == alice.user_id
            for table in (
                "trading_journal",
                "trading_accounts",
                "mt5_connections",
                "mt5_credentials",
                "mt5_security_audit",
            ):
                owners = await conn.fetch(f"SELECT DISTINCT user_id FROM {table}")  # noqa: S608
                assert {r["user_id"] for r in owners} == {alice.user_id}, table
            assert (
                await conn.execute(
                    "UPDATE trading_journal SET notes = 'x' WHERE user_id = $1", bob.user_id
                )
                == "UPDATE 0"
            )
            assert (
                await conn.execute("DELETE FROM trading_journal WHERE user_id = $1", bob.user_id)
                == "DELETE 0"
            )
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.execute(
                    "INSERT INTO trading_journal (user_id, symbol, side) VALUES ($1, 'X', 'buy')",
                    bob.user_id,
                )
