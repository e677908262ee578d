"""Creating broker connections against the real database: one broker account feeds exactly one
connection, because journal keys are derived from the broker account."""

from __future__ import annotations

import uuid

import asyncpg
import pytest

from services.shared.connection_admin.connections import (
    ConnectionRefused,
    NewConnection,
    create_user,
)
from services.shared.vault import CredentialVault
from tests.support.builders import SERVER, TestConnection, connect_broker_account

pytestmark = pytest.mark.integration


async def connect(
    pool: asyncpg.Pool,
    vault: CredentialVault,
    user_id: uuid.UUID,
    account_number: str,
    server: str = SERVER,
) -> NewConnection:
    async with pool.acquire() as conn:
        return await connect_broker_account(
            conn, vault, user_id, "mt5", account_number, server=server, account_label="again"
        )


async def accounts_numbered(pool: asyncpg.Pool, account_number: str) -> int:
    count: int = await pool.fetchval(
        "SELECT count(*) FROM trading_accounts WHERE account_number = $1", account_number
    )
    return count


@pytest.mark.parametrize("by", ["the same user", "another user"])
async def test_a_broker_account_already_connected_is_refused_and_leaves_nothing_behind(
    pool: asyncpg.Pool, vault: CredentialVault, connection: TestConnection, by: str
) -> None:
    user_id = connection.user_id
    if by == "another user":
        async with pool.acquire() as conn:
            user_id = await create_user(conn, f"other-{uuid.uuid4().hex[:10]}@poscal.test")

    with pytest.raises(ConnectionRefused, match="already connected"):
        await connect(pool, vault, user_id, str(connection.login))

    assert await accounts_numbered(pool, str(connection.login)) == 1


async def test_the_same_account_number_on_another_server_is_another_account(
    pool: asyncpg.Pool, vault: CredentialVault, connection: TestConnection
) -> None:
    other = await connect(
        pool, vault, connection.user_id, str(connection.login), server="Other-Server"
    )

    assert other.connection_id != connection.created.connection_id
    assert await accounts_numbered(pool, str(connection.login)) == 2


@pytest.mark.parametrize(("account_number", "server"), [("", SERVER), ("7", " "), ("7", "")])
async def test_a_blank_account_number_or_server_is_refused_before_anything_is_written(
    pool: asyncpg.Pool,
    vault: CredentialVault,
    connection: TestConnection,
    account_number: str,
    server: str,
) -> None:
    with pytest.raises(ConnectionRefused, match="must not be blank"):
        await connect(pool, vault, connection.user_id, account_number, server=server)

    assert await accounts_numbered(pool, account_number) == 0
