"""Master key rotation on the real database: services holding the new key and the old one as a
previous key open everything; `keys rotate` moves every data key under the new key, one row at a
time, so it can be interrupted, re-run, or run twice at once, and then the old key can go.

Each spec runs in a database of its own: rotation acts on every data key there is.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import asyncpg
import pytest

from services.cli.keys import KeyRotationRefused, RotationReport, rotate_data_keys
from services.shared.credential_kinds import WEBHOOK_SECRET
from services.shared.crypto import DecryptionFailed, LocalKeyEncryptionKey, generate_key
from services.shared.database import create_pool
from services.shared.keyring import KeyRing, UnknownKeyEncryptionKey
from services.shared.signatures import decode_secret
from services.shared.vault import CredentialVault
from tests.support.builders import TestConnection, new_connection
from tests.support.scratch_database import scratch_database

pytestmark = pytest.mark.integration

OLD = LocalKeyEncryptionKey(generate_key())
NEW = LocalKeyEncryptionKey(generate_key())
MID_ROTATION = KeyRing(NEW, [OLD])


@pytest.fixture
async def own_pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    async with scratch_database(database_url) as dsn:
        pool = await create_pool(dsn, max_size=4)
        yield pool
        await pool.close()


async def connections_under(
    pool: asyncpg.Pool, kek: LocalKeyEncryptionKey | KeyRing, count: int
) -> list[TestConnection]:
    """`count` users, each with a connection whose data key is wrapped under `kek`."""
    async with pool.acquire() as conn:
        return [await new_connection(conn, CredentialVault(kek)) for _ in range(count)]


async def open_secrets(
    pool: asyncpg.Pool, vault: CredentialVault, connections: list[TestConnection]
) -> list[list[bytes]]:
    async with pool.acquire() as conn:
        return [
            await vault.open_active(
                conn, c.created.connection_id, WEBHOOK_SECRET, datetime.now(UTC)
            )
            for c in connections
        ]


def secrets_of(connections: list[TestConnection]) -> list[list[bytes]]:
    return [[decode_secret(c.created.webhook_secret)] for c in connections]


async def kek_ids(pool: asyncpg.Pool) -> dict[str, int]:
    rows = await pool.fetch("SELECT kek_id, count(*) AS n FROM user_data_keys GROUP BY kek_id")
    return {r["kek_id"]: r["n"] for r in rows}


async def rotate(pool: asyncpg.Pool, keys: KeyRing, limit: int | None = None) -> RotationReport:
    async with pool.acquire() as conn:
        return await rotate_data_keys(conn, keys, limit=limit)


# --- the vault during a rotation -----------------------------------------------------------


async def test_with_the_old_key_as_previous_credentials_sealed_under_it_still_open(
    own_pool: asyncpg.Pool,
) -> None:
    sealed_under_old = await connections_under(own_pool, OLD, 2)

    opened = await open_secrets(own_pool, CredentialVault(MID_ROTATION), sealed_under_old)

    assert opened == secrets_of(sealed_under_old)


async def test_new_data_keys_are_wrapped_under_the_current_key_only(
    own_pool: asyncpg.Pool,
) -> None:
    created = await connections_under(own_pool, MID_ROTATION, 2)

    assert await kek_ids(own_pool) == {NEW.key_id: 2}
    assert await open_secrets(own_pool, CredentialVault(NEW), created) == secrets_of(created)


async def test_a_plain_key_still_makes_a_vault(own_pool: asyncpg.Pool) -> None:
    created = await connections_under(own_pool, OLD, 1)
    assert await open_secrets(own_pool, CredentialVault(OLD), created) == secrets_of(created)


async def test_a_data_key_under_a_key_the_vault_does_not_hold_fails_closed_naming_its_id(
    own_pool: asyncpg.Pool,
) -> None:
    created = await connections_under(own_pool, OLD, 1)

    with pytest.raises(UnknownKeyEncryptionKey, match=OLD.key_id) as refused:
        await open_secrets(own_pool, CredentialVault(NEW), created)
    assert refused.value.kek_id == OLD.key_id
    # Storing for that user needs the data key too: refused alike, nothing written.
    async with own_pool.acquire() as conn:
        with pytest.raises(DecryptionFailed):
            await CredentialVault(NEW).store(
                conn,
                user_id=created[0].user_id,
                connection_id=created[0].created.connection_id,
                kind=WEBHOOK_SECRET,
                plaintext=b"k" * 32,
            )


# --- keys rotate ---------------------------------------------------------------------------


async def test_rotation_rewraps_every_old_data_key_and_then_the_new_key_alone_opens_all(
    own_pool: asyncpg.Pool,
) -> None:
    under_old = await connections_under(own_pool, OLD, 4)
    under_new = await connections_under(own_pool, NEW, 2)
    everyone = under_old + under_new

    report = await rotate(own_pool, MID_ROTATION)

    assert report == RotationReport(rewrapped=4, already_current=2, remaining=0)
    assert await kek_ids(own_pool) == {NEW.key_id: 6}
    assert await open_secrets(own_pool, CredentialVault(MID_ROTATION), everyone) == secrets_of(
        everyone
    )
    assert await open_secrets(own_pool, CredentialVault(NEW), everyone) == secrets_of(everyone)
    with pytest.raises(UnknownKeyEncryptionKey):
        await open_secrets(own_pool, CredentialVault(OLD), under_old)


async def test_rotation_keeps_each_data_key_so_credentials_are_not_resealed(
    own_pool: asyncpg.Pool,
) -> None:
    await connections_under(own_pool, OLD, 2)
    before = await own_pool.fetch("SELECT id, ciphertext FROM mt5_credentials ORDER BY id")

    await rotate(own_pool, MID_ROTATION)

    assert await own_pool.fetch("SELECT id, ciphertext FROM mt5_credentials ORDER BY id") == before


async def test_an_interrupted_rotation_loses_nothing_and_a_rerun_finishes_it(
    own_pool: asyncpg.Pool,
) -> None:
    under_old = await connections_under(own_pool, OLD, 5)

    first = await rotate(own_pool, MID_ROTATION, limit=2)

    assert first == RotationReport(rewrapped=2, already_current=0, remaining=3)
    assert await kek_ids(own_pool) == {NEW.key_id: 2, OLD.key_id: 3}
    # Halfway, services holding both keys open everything.
    assert await open_secrets(own_pool, CredentialVault(MID_ROTATION), under_old) == (
        secrets_of(under_old)
    )

    second = await rotate(own_pool, MID_ROTATION)

    assert second == RotationReport(rewrapped=3, already_current=2, remaining=0)
    assert await open_secrets(own_pool, CredentialVault(NEW), under_old) == secrets_of(under_old)
    assert await rotate(own_pool, MID_ROTATION) == RotationReport(0, 5, 0)


async def test_two_rotations_at_once_rewrap_each_data_key_exactly_once(
    own_pool: asyncpg.Pool,
) -> None:
    under_old = await connections_under(own_pool, OLD, 40)

    reports = await asyncio.gather(rotate(own_pool, MID_ROTATION), rotate(own_pool, MID_ROTATION))

    assert sum(r.rewrapped for r in reports) == 40
    assert all(r.remaining == 0 for r in reports)
    assert await open_secrets(own_pool, CredentialVault(NEW), under_old) == secrets_of(under_old)


async def test_a_data_key_created_while_rotating_is_under_the_current_key_already(
    own_pool: asyncpg.Pool,
) -> None:
    await connections_under(own_pool, OLD, 3)

    # A service stores credentials for new users while the rotation runs.
    _, created = await asyncio.gather(
        rotate(own_pool, MID_ROTATION), connections_under(own_pool, MID_ROTATION, 3)
    )

    assert await kek_ids(own_pool) == {NEW.key_id: 6}
    assert await open_secrets(own_pool, CredentialVault(NEW), created) == secrets_of(created)


async def test_rotation_refuses_before_changing_anything_if_a_data_key_is_under_an_unknown_key(
    own_pool: asyncpg.Pool,
) -> None:
    stranger = LocalKeyEncryptionKey(generate_key())
    await connections_under(own_pool, OLD, 2)
    await connections_under(own_pool, stranger, 1)

    with pytest.raises(KeyRotationRefused) as refused:
        await rotate(own_pool, MID_ROTATION)

    assert f"{stranger.key_id} (1 data keys)" in str(refused.value)
    assert await kek_ids(own_pool) == {OLD.key_id: 2, stranger.key_id: 1}


async def test_a_data_key_that_does_not_unwrap_stops_the_rotation_naming_its_row(
    own_pool: asyncpg.Pool,
) -> None:
    (damaged,) = await connections_under(own_pool, OLD, 1)
    await own_pool.execute(
        "UPDATE user_data_keys SET wrapped_key = set_byte(wrapped_key, 20, get_byte(wrapped_key,"
        " 20) # 1) WHERE user_id = $1",
        damaged.user_id,
    )

    with pytest.raises(KeyRotationRefused, match=f"user {damaged.user_id} version 1"):
        await rotate(own_pool, MID_ROTATION)
    assert await kek_ids(own_pool) == {OLD.key_id: 1}


async def test_with_nothing_to_rotate_everything_is_reported_current(
    own_pool: asyncpg.Pool,
) -> None:
    assert await rotate(own_pool, KeyRing(NEW)) == RotationReport(0, 0, 0)
    await connections_under(own_pool, NEW, 2)
    assert await rotate(own_pool, KeyRing(NEW)) == RotationReport(0, 2, 0)
