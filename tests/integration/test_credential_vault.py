"""Secrets at rest in the real database: only ciphertext is stored, and it opens only for the
connection it was sealed for, under the master key it was sealed with, until it expires."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from services.shared.credential_kinds import WEBHOOK_SECRET as WEBHOOK_SECRET_KIND
from services.shared.crypto import DecryptionFailed, LocalKeyEncryptionKey, new_master_key_base64
from services.shared.signatures import decode_secret
from services.shared.vault import CredentialVault
from tests.support.builders import (
    SERVER,
    TestConnection,
    connect_broker_account,
    new_connection,
    store_credential,
)

pytestmark = pytest.mark.integration
PASSWORD_KIND = "mt5_investor_password"
PASSWORD = b"investor-password-5f1e9c"


async def store_password(
    pool: asyncpg.Pool,
    vault: CredentialVault,
    connection: TestConnection,
    expires_at: datetime | None = None,
    plaintext: bytes = PASSWORD,
) -> uuid.UUID:
    return await store_credential(pool, vault, connection, PASSWORD_KIND, plaintext, expires_at)


async def open_passwords(
    pool: asyncpg.Pool, vault: CredentialVault, connection_id: uuid.UUID
) -> list[bytes]:
    async with pool.acquire() as conn:
        return await vault.open_active(conn, connection_id, PASSWORD_KIND, datetime.now(UTC))


async def test_a_stored_secret_opens_for_its_connection(
    pool: asyncpg.Pool, vault: CredentialVault, connection: TestConnection
) -> None:
    await store_password(pool, vault, connection)

    assert await open_passwords(pool, vault, connection.created.connection_id) == [PASSWORD]
    async with pool.acquire() as conn:
        assert await vault.open_active(
            conn, connection.created.connection_id, WEBHOOK_SECRET_KIND, datetime.now(UTC)
        ) == [decode_secret(connection.created.webhook_secret)]


async def test_the_ciphertext_column_never_holds_the_plaintext(
    pool: asyncpg.Pool, vault: CredentialVault, connection: TestConnection
) -> None:
    credential_id = await store_password(pool, vault, connection)

    stored = await pool.fetch(
        "SELECT id, kind, ciphertext FROM mt5_credentials WHERE connection_id = $1",
        connection.created.connection_id,
    )
    ciphertexts = {r["kind"]: bytes(r["ciphertext"]) for r in stored}
    assert set(ciphertexts) == {PASSWORD_KIND, WEBHOOK_SECRET_KIND}
    assert {r["id"] for r in stored if r["kind"] == PASSWORD_KIND} == {credential_id}
    password_ciphertext = ciphertexts[PASSWORD_KIND]
    assert password_ciphertext != PASSWORD
    assert PASSWORD not in password_ciphertext
    webhook_ciphertext = ciphertexts[WEBHOOK_SECRET_KIND]
    assert decode_secret(connection.created.webhook_secret) not in webhook_ciphertext
    assert connection.created.webhook_secret.encode() not in webhook_ciphertext


async def test_the_same_secret_stored_twice_gives_different_ciphertexts(
    pool: asyncpg.Pool, vault: CredentialVault, connection: TestConnection
) -> None:
    await store_password(pool, vault, connection)
    await store_password(pool, vault, connection)

    ciphertexts = await pool.fetch(
        "SELECT ciphertext FROM mt5_credentials WHERE connection_id = $1 AND kind = $2",
        connection.created.connection_id,
        PASSWORD_KIND,
    )
    assert len({bytes(r["ciphertext"]) for r in ciphertexts}) == 2
    assert await open_passwords(pool, vault, connection.created.connection_id) == [PASSWORD] * 2


async def _second_connection_of(
    pool: asyncpg.Pool, vault: CredentialVault, owner: TestConnection
) -> uuid.UUID:
    async with pool.acquire() as conn:
        created = await connect_broker_account(
            conn,
            vault,
            owner.user_id,
            "mt5",
            f"{owner.login}0",
            server=SERVER,
            connection_type="live",
            account_label="second account",
        )
    return created.connection_id


async def test_a_ciphertext_moved_to_another_connection_of_the_same_user_does_not_open(
    pool: asyncpg.Pool, vault: CredentialVault, connection: TestConnection
) -> None:
    # The same user means the same data key: only the binding to the connection stops it.
    credential_id = await store_password(pool, vault, connection)
    other_connection = await _second_connection_of(pool, vault, connection)

    moved = await pool.execute(
        "UPDATE mt5_credentials SET connection_id = $1 WHERE id = $2",
        other_connection,
        credential_id,
    )

    assert moved == "UPDATE 1"
    with pytest.raises(DecryptionFailed):
        await open_passwords(pool, vault, other_connection)


async def test_a_ciphertext_moved_to_another_users_connection_does_not_open(
    pool: asyncpg.Pool, vault: CredentialVault, connection: TestConnection
) -> None:
    credential_id = await store_password(pool, vault, connection)
    async with pool.acquire() as conn:
        stranger = await new_connection(conn, vault)

    # The schema refuses a credential under one user's connection and another user's name...
    with pytest.raises(asyncpg.ForeignKeyViolationError):
        await pool.execute(
            "UPDATE mt5_credentials SET connection_id = $1 WHERE id = $2",
            stranger.created.connection_id,
            credential_id,
        )
    # ...so it is moved whole, and opened with the stranger's own data key: still sealed.
    moved = await pool.execute(
        "UPDATE mt5_credentials SET connection_id = $1, user_id = $2 WHERE id = $3",
        stranger.created.connection_id,
        stranger.user_id,
        credential_id,
    )
    assert moved == "UPDATE 1"
    with pytest.raises(DecryptionFailed):
        await open_passwords(pool, vault, stranger.created.connection_id)


async def test_a_vault_with_another_master_key_opens_nothing(
    pool: asyncpg.Pool, vault: CredentialVault, connection: TestConnection
) -> None:
    await store_password(pool, vault, connection)
    other_vault = CredentialVault(LocalKeyEncryptionKey.from_base64(new_master_key_base64()))

    with pytest.raises(DecryptionFailed):
        await open_passwords(pool, other_vault, connection.created.connection_id)
    async with pool.acquire() as conn:
        with pytest.raises(DecryptionFailed):
            await other_vault.open_active(
                conn, connection.created.connection_id, WEBHOOK_SECRET_KIND, datetime.now(UTC)
            )


async def test_expired_credentials_are_not_returned(
    pool: asyncpg.Pool, vault: CredentialVault, connection: TestConnection
) -> None:
    now = datetime.now(UTC)
    await store_password(pool, vault, connection, now - timedelta(seconds=1), b"expired")
    await store_password(pool, vault, connection, now + timedelta(hours=1), b"current")
    await pool.execute(
        "UPDATE mt5_credentials SET expires_at = now() - interval '1 second'"
        " WHERE connection_id = $1 AND kind = $2",
        connection.created.connection_id,
        WEBHOOK_SECRET_KIND,
    )

    assert await open_passwords(pool, vault, connection.created.connection_id) == [b"current"]
    async with pool.acquire() as conn:
        assert (
            await vault.open_active(
                conn, connection.created.connection_id, WEBHOOK_SECRET_KIND, datetime.now(UTC)
            )
            == []
        )


async def test_revoked_credentials_are_not_returned(
    pool: asyncpg.Pool, vault: CredentialVault, connection: TestConnection
) -> None:
    revoked = await store_password(pool, vault, connection, plaintext=b"revoked")
    await store_password(pool, vault, connection, plaintext=b"current")
    await pool.execute("UPDATE mt5_credentials SET revoked_at = now() WHERE id = $1", revoked)

    assert await open_passwords(pool, vault, connection.created.connection_id) == [b"current"]
