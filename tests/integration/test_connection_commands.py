"""The operator's connection commands on the real database: broker credentials replace the old
ones; a rotated webhook secret overlaps the old one and unlocks a lockout; public keys are added
once; the listing says whose credentials are due for rotation, and which polled connections
wait for credentials."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from services.shared.connection_admin.connections import (
    ConnectionNotFound,
    ConnectionRefused,
    NewConnection,
)
from services.shared.connection_admin.credentials import (
    add_public_key,
    rotate_webhook_secret,
    set_broker_credentials,
)
from services.shared.connection_admin.inputs import InvalidInput
from services.shared.connection_admin.listing import list_connections
from services.shared.credential_kinds import (
    BROKER_CREDENTIALS,
    WEBHOOK_PUBLIC_KEY,
    WEBHOOK_SECRET,
)
from services.shared.signatures import decode_secret
from services.shared.vault import CredentialVault
from tests.support.builders import SERVER, TestConnection, connect_broker_account, new_connection

pytestmark = pytest.mark.integration

MT5_LOGIN = '{"login": "52557820", "password": "%s", "server": "X-Demo"}'


async def open_active(
    pool: asyncpg.Pool, vault: CredentialVault, connection_id: uuid.UUID, kind: str, at: datetime
) -> list[bytes]:
    async with pool.acquire() as conn:
        return await vault.open_active(conn, connection_id, kind, at)


def now() -> datetime:
    return datetime.now(UTC)


# --- set-credentials -----------------------------------------------------------------------


async def set_credentials(
    pool: asyncpg.Pool, vault: CredentialVault, connection_id: uuid.UUID, text: str
) -> datetime:
    async with pool.acquire() as conn:
        stored = await set_broker_credentials(conn, vault, connection_id, text)
    assert stored.connection_id == connection_id
    return stored.stored_at


async def test_mt5_credentials_are_sealed_and_open_as_login_password_and_server(
    pool: asyncpg.Pool, vault: CredentialVault, connection: TestConnection
) -> None:
    connection_id = connection.created.connection_id

    stored_at = await set_credentials(pool, vault, connection_id, MT5_LOGIN % "pw-4f1e9c")

    (opened,) = await open_active(pool, vault, connection_id, BROKER_CREDENTIALS, now())
    assert orjson.loads(opened) == {
        "login": "52557820",
        "password": "pw-4f1e9c",
        "server": "X-Demo",
    }
    ciphertext = await pool.fetchval(
        "SELECT ciphertext FROM mt5_credentials WHERE connection_id = $1 AND kind = $2",
        connection_id,
        BROKER_CREDENTIALS,
    )
    assert b"pw-4f1e9c" not in ciphertext
    assert abs(stored_at - now()) < timedelta(minutes=1)


async def test_new_broker_credentials_revoke_the_previous_ones_and_their_rotation_mark(
    pool: asyncpg.Pool, vault: CredentialVault, connection: TestConnection
) -> None:
    connection_id = connection.created.connection_id
    await set_credentials(pool, vault, connection_id, MT5_LOGIN % "first")
    await pool.execute(
        "UPDATE mt5_credentials SET rotation_forced_at = now(), rotation_forced_reason = 'lockout'"
        " WHERE connection_id = $1",
        connection_id,
    )

    await set_credentials(pool, vault, connection_id, MT5_LOGIN % "second")

    (opened,) = await open_active(pool, vault, connection_id, BROKER_CREDENTIALS, now())
    assert orjson.loads(opened)["password"] == "second"
    rows = await pool.fetch(
        "SELECT revoked_at, rotation_forced_at FROM mt5_credentials"
        " WHERE connection_id = $1 AND kind = $2 ORDER BY created_at, revoked_at NULLS LAST",
        connection_id,
        BROKER_CREDENTIALS,
    )
    assert [(r["revoked_at"] is None, r["rotation_forced_at"] is None) for r in rows] == [
        (False, False),
        (True, True),
    ]
    # Other kinds are not the broker credentials: the webhook secret is left as it was.
    assert await open_active(pool, vault, connection_id, WEBHOOK_SECRET, now()) == [
        decode_secret(connection.created.webhook_secret)
    ]


async def test_refused_credentials_change_nothing(
    pool: asyncpg.Pool, vault: CredentialVault, connection: TestConnection
) -> None:
    connection_id = connection.created.connection_id
    await set_credentials(pool, vault, connection_id, MT5_LOGIN % "kept")

    for bad in ("", "  \n", '{"login": "1", "password": "x"}', "just-a-token"):
        async with pool.acquire() as conn:
            with pytest.raises(InvalidInput):
                await set_broker_credentials(conn, vault, connection_id, bad)

    (opened,) = await open_active(pool, vault, connection_id, BROKER_CREDENTIALS, now())
    assert orjson.loads(opened)["password"] == "kept"


async def oanda_practice_account(
    pool: asyncpg.Pool, vault: CredentialVault, connection: TestConnection
) -> NewConnection:
    """An OANDA practice account of the connection's user, beside its MT5 one."""
    async with pool.acquire() as conn:
        return await connect_broker_account(
            conn,
            vault,
            connection.user_id,
            "oanda",
            f"101-004-{connection.login}-001",
            server="practice",
            account_label="oanda practice",
        )


async def test_a_token_broker_stores_the_token_itself(
    pool: asyncpg.Pool, vault: CredentialVault, connection: TestConnection
) -> None:
    oanda = await oanda_practice_account(pool, vault, connection)

    await set_credentials(pool, vault, oanda.connection_id, "  tok-abc-123 \n")

    assert await open_active(pool, vault, oanda.connection_id, BROKER_CREDENTIALS, now()) == [
        b"tok-abc-123"
    ]


async def test_setting_credentials_leaves_the_connection_status_alone(
    pool: asyncpg.Pool, vault: CredentialVault, connection: TestConnection
) -> None:
    connection_id = connection.created.connection_id
    await pool.execute(
        "UPDATE mt5_connections SET status = 'error', last_error = 'credentials rejected'"
        " WHERE id = $1",
        connection_id,
    )

    await set_credentials(pool, vault, connection_id, MT5_LOGIN % "fixed")

    row = await pool.fetchrow(
        "SELECT status, last_error FROM mt5_connections WHERE id = $1", connection_id
    )
    assert row is not None
    assert (row["status"], row["last_error"]) == ("error", "credentials rejected")


# --- unknown and revoked connections -------------------------------------------------------


async def test_every_command_refuses_an_unknown_connection(
    pool: asyncpg.Pool, vault: CredentialVault
) -> None:
    unknown = uuid.uuid4()
    raw_key = Ed25519PrivateKey.generate().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    async with pool.acquire() as conn:
        with pytest.raises(ConnectionNotFound, match=f"no connection {unknown}"):
            await set_broker_credentials(conn, vault, unknown, MT5_LOGIN % "pw")
        with pytest.raises(ConnectionNotFound, match=f"no connection {unknown}"):
            await rotate_webhook_secret(conn, vault, unknown, timedelta(hours=24))
        with pytest.raises(ConnectionNotFound, match=f"no connection {unknown}"):
            await add_public_key(conn, vault, unknown, raw_key)


async def test_a_revoked_connection_gets_no_new_credentials(
    pool: asyncpg.Pool, vault: CredentialVault, connection: TestConnection
) -> None:
    connection_id = connection.created.connection_id
    await pool.execute(
        "UPDATE mt5_connections SET lifecycle = 'revoked' WHERE id = $1", connection_id
    )

    async with pool.acquire() as conn:
        with pytest.raises(ConnectionRefused, match="is revoked"):
            await rotate_webhook_secret(conn, vault, connection_id, timedelta(0))
        with pytest.raises(ConnectionRefused, match="is revoked"):
            await set_broker_credentials(conn, vault, connection_id, MT5_LOGIN % "pw")
    assert (
        await pool.fetchval(
            "SELECT count(*) FROM mt5_credentials WHERE connection_id = $1", connection_id
        )
        == 1
    )


# --- rotate-secret -------------------------------------------------------------------------


async def rotate(
    pool: asyncpg.Pool, vault: CredentialVault, connection_id: uuid.UUID, overlap: timedelta
) -> tuple[bytes, datetime | None]:
    async with pool.acquire() as conn:
        rotated = await rotate_webhook_secret(conn, vault, connection_id, overlap)
    assert rotated.connection_id == connection_id
    assert rotated.webhook_secret.startswith("whsec_")
    return decode_secret(rotated.webhook_secret), rotated.previous_secrets_expire_at


async def test_a_rotated_secret_verifies_beside_the_old_one_until_the_overlap_ends(
    pool: asyncpg.Pool, vault: CredentialVault, connection: TestConnection
) -> None:
    connection_id = connection.created.connection_id
    old = decode_secret(connection.created.webhook_secret)

    new, old_expires_at = await rotate(pool, vault, connection_id, timedelta(hours=24))

    assert len(new) == 32 and new != old
    assert old_expires_at is not None
    assert abs(old_expires_at - (now() + timedelta(hours=24))) < timedelta(minutes=1)
    assert await open_active(pool, vault, connection_id, WEBHOOK_SECRET, now()) == [new, old]
    after_overlap = old_expires_at + timedelta(seconds=1)
    assert await open_active(pool, vault, connection_id, WEBHOOK_SECRET, after_overlap) == [new]


async def test_with_no_overlap_the_old_secret_stops_verifying_at_once(
    pool: asyncpg.Pool, vault: CredentialVault, connection: TestConnection
) -> None:
    connection_id = connection.created.connection_id

    new, _ = await rotate(pool, vault, connection_id, timedelta(0))

    assert await open_active(pool, vault, connection_id, WEBHOOK_SECRET, now()) == [new]


async def test_rotation_never_extends_a_secret_that_was_to_expire_sooner(
    pool: asyncpg.Pool, vault: CredentialVault, connection: TestConnection
) -> None:
    connection_id = connection.created.connection_id
    first, _ = await rotate(pool, vault, connection_id, timedelta(hours=1))

    second, expire_at = await rotate(pool, vault, connection_id, timedelta(hours=24))

    rows = await pool.fetch(
        "SELECT expires_at FROM mt5_credentials WHERE connection_id = $1 AND kind = $2"
        " ORDER BY created_at",
        connection_id,
        WEBHOOK_SECRET,
    )
    original_expiry, first_expiry, second_expiry = (r["expires_at"] for r in rows)
    assert original_expiry - now() < timedelta(hours=1, minutes=1)
    assert timedelta(hours=23) < first_expiry - now() < timedelta(hours=25)
    assert second_expiry is None
    assert expire_at == first_expiry
    assert await open_active(pool, vault, connection_id, WEBHOOK_SECRET, now()) == [
        second,
        first,
        decode_secret(connection.created.webhook_secret),
    ]


async def test_rotating_unlocks_a_locked_connection_and_clears_the_forced_rotation_mark(
    pool: asyncpg.Pool, vault: CredentialVault, connection: TestConnection
) -> None:
    connection_id = connection.created.connection_id
    await pool.execute(
        "UPDATE mt5_connections SET lifecycle = 'locked', locked_at = now(),"
        " last_error = 'locked: 10 failed signatures' WHERE id = $1",
        connection_id,
    )
    await pool.execute(
        "UPDATE mt5_security_audit SET consecutive_failures = 10, last_failure_at = now()"
        " WHERE connection_id = $1",
        connection_id,
    )
    await pool.execute(
        "UPDATE mt5_credentials SET rotation_forced_at = now(), rotation_forced_reason = 'lockout'"
        " WHERE connection_id = $1",
        connection_id,
    )

    async with pool.acquire() as conn:
        rotated = await rotate_webhook_secret(conn, vault, connection_id, timedelta(0))

    assert rotated.unlocked
    row = await pool.fetchrow(
        "SELECT c.lifecycle, c.locked_at, c.last_error, a.consecutive_failures"
        " FROM mt5_connections c JOIN mt5_security_audit a ON a.connection_id = c.id"
        " WHERE c.id = $1",
        connection_id,
    )
    assert row is not None
    assert dict(row) == {
        "lifecycle": "active",
        "locked_at": None,
        "last_error": None,
        "consecutive_failures": 0,
    }
    assert not await pool.fetchval(
        "SELECT count(*) FROM mt5_credentials WHERE connection_id = $1"
        " AND rotation_forced_at IS NOT NULL",
        connection_id,
    )


async def test_rotating_a_connection_in_error_leaves_its_status_alone(
    pool: asyncpg.Pool, vault: CredentialVault, connection: TestConnection
) -> None:
    connection_id = connection.created.connection_id
    await pool.execute(
        "UPDATE mt5_connections SET status = 'error', last_error = 'broker unreachable'"
        " WHERE id = $1",
        connection_id,
    )

    async with pool.acquire() as conn:
        rotated = await rotate_webhook_secret(conn, vault, connection_id, timedelta(hours=1))

    assert not rotated.unlocked
    row = await pool.fetchrow(
        "SELECT status, last_error FROM mt5_connections WHERE id = $1", connection_id
    )
    assert row is not None
    assert (row["status"], row["last_error"]) == ("error", "broker unreachable")


async def test_the_rotated_secret_never_shows_in_its_repr(
    pool: asyncpg.Pool, vault: CredentialVault, connection: TestConnection
) -> None:
    async with pool.acquire() as conn:
        rotated = await rotate_webhook_secret(
            conn, vault, connection.created.connection_id, timedelta(0)
        )
    assert rotated.webhook_secret not in repr(rotated)


# --- add-public-key ------------------------------------------------------------------------


def public_key() -> bytes:
    return Ed25519PrivateKey.generate().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


async def test_public_keys_are_added_beside_each_other_and_the_secret(
    pool: asyncpg.Pool, vault: CredentialVault, connection: TestConnection
) -> None:
    connection_id = connection.created.connection_id
    first, second = public_key(), public_key()

    async with pool.acquire() as conn:
        added = await add_public_key(conn, vault, connection_id, first)
        await add_public_key(conn, vault, connection_id, second)

    assert added.connection_id == connection_id
    assert await open_active(pool, vault, connection_id, WEBHOOK_PUBLIC_KEY, now()) == [
        second,
        first,
    ]
    assert len(await open_active(pool, vault, connection_id, WEBHOOK_SECRET, now())) == 1


async def test_a_public_key_already_active_is_not_added_twice(
    pool: asyncpg.Pool, vault: CredentialVault, connection: TestConnection
) -> None:
    connection_id = connection.created.connection_id
    key = public_key()
    async with pool.acquire() as conn:
        await add_public_key(conn, vault, connection_id, key)
        with pytest.raises(ConnectionRefused, match="already a webhook public key"):
            await add_public_key(conn, vault, connection_id, key)
    assert await open_active(pool, vault, connection_id, WEBHOOK_PUBLIC_KEY, now()) == [key]


# --- list ----------------------------------------------------------------------------------


async def listed(
    pool: asyncpg.Pool, user_id: uuid.UUID, due_only: bool = False
) -> list[dict[str, Any]]:
    async with pool.acquire() as conn:
        return await list_connections(
            conn, now(), "https://hooks.test", user_id=user_id, rotation_due_only=due_only
        )


async def test_a_listed_connection_shows_its_health_and_credential_ages(
    pool: asyncpg.Pool, vault: CredentialVault, connection: TestConnection
) -> None:
    connection_id = connection.created.connection_id
    await pool.execute(
        "UPDATE mt5_security_audit SET consecutive_failures = 3 WHERE connection_id = $1",
        connection_id,
    )

    (record,) = await listed(pool, connection.user_id)

    assert record == {
        "connection_id": connection_id,
        "user_id": connection.user_id,
        "broker": "mt5",
        "connection_type": "demo",
        "account_number": str(connection.login),
        "server": SERVER,
        "account_label": "test account",
        "webhook_url": f"https://hooks.test{connection.webhook_path}",
        "lifecycle": "active",
        "status": "idle",
        "last_sync_at": None,
        "last_error": None,
        "consecutive_failures": 3,
        "locked_at": None,
        "live_enabled_at": None,
        "polled": False,
        "sync_state": None,
        "last_sync_success_at": None,
        "next_sync_at": None,
        "sync_failures": 0,
        "last_sync_error": None,
        "credentials_rejected_at": None,
        "credentials_age_days": {WEBHOOK_SECRET: 0},
        "rotation": "ok",
        "rotation_reason": None,
        "last_reconciled_at": None,
        "reconciliation": None,
        "missing_deals": None,
        "balance_drift": None,
    }


async def test_a_listed_connection_shows_its_last_reconciliation(
    pool: asyncpg.Pool, connection: TestConnection
) -> None:
    reconciled_at = now()
    await pool.execute(
        "INSERT INTO connection_reconciliations"
        " (connection_id, user_id, last_reconciled_at, result, balance_drift)"
        " VALUES ($1, $2, $3, 'gaps', 0.10)",
        connection.created.connection_id,
        connection.user_id,
        reconciled_at,
    )

    (record,) = await listed(pool, connection.user_id)

    assert record["last_reconciled_at"] == reconciled_at
    assert (record["reconciliation"], record["missing_deals"]) == ("gaps", 0)
    assert record["balance_drift"] == "0.10"


async def backdate(pool: asyncpg.Pool, connection_id: uuid.UUID, kind: str, days: int) -> None:
    await pool.execute(
        "UPDATE mt5_credentials SET last_rotated_at = now() - make_interval(days => $3)"
        " WHERE connection_id = $1 AND kind = $2",
        connection_id,
        kind,
        days,
    )


async def test_the_listing_says_which_connections_are_due_and_why(
    pool: asyncpg.Pool, vault: CredentialVault
) -> None:
    async with pool.acquire() as conn:
        fresh = await new_connection(conn, vault)
    user_id = fresh.user_id
    ids = {"fresh": fresh.created.connection_id}
    async with pool.acquire() as conn:
        for name, login in (("warning", 1), ("due", 2), ("forced", 3), ("revoked", 4)):
            created = await connect_broker_account(
                conn,
                vault,
                user_id,
                "mt5",
                f"{fresh.login}{login}",
                server=SERVER,
                connection_type="live",
                account_label=name,
            )
            ids[name] = created.connection_id
    await backdate(pool, ids["warning"], WEBHOOK_SECRET, 61)
    await backdate(pool, ids["due"], WEBHOOK_SECRET, 91)
    await backdate(pool, ids["revoked"], WEBHOOK_SECRET, 200)
    await pool.execute(
        "UPDATE mt5_connections SET lifecycle = 'revoked' WHERE id = $1", ids["revoked"]
    )
    await pool.execute(
        "UPDATE mt5_credentials SET rotation_forced_at = now(),"
        " rotation_forced_reason = 'lockout: 10 failed signatures' WHERE connection_id = $1",
        ids["forced"],
    )

    everything = {r["account_label"]: r for r in await listed(pool, user_id)}
    due = await listed(pool, user_id, due_only=True)

    assert {label: r["rotation"] for label, r in everything.items()} == {
        "test account": "ok",
        "warning": "warning",
        "due": "due",
        "forced": "forced",
        "revoked": "due",
    }
    assert everything["due"]["credentials_age_days"] == {WEBHOOK_SECRET: 91}
    assert everything["due"]["rotation_reason"] == "webhook_secret older than 90 days"
    assert everything["forced"]["rotation_reason"] == "lockout: 10 failed signatures"
    assert [r["account_label"] for r in due] == ["warning", "due", "forced"]


async def test_a_rotated_secret_is_no_longer_due_though_the_old_one_still_overlaps(
    pool: asyncpg.Pool, vault: CredentialVault, connection: TestConnection
) -> None:
    connection_id = connection.created.connection_id
    await backdate(pool, connection_id, WEBHOOK_SECRET, 120)
    assert (await listed(pool, connection.user_id))[0]["rotation"] == "due"

    await rotate(pool, vault, connection_id, timedelta(hours=24))

    (record,) = await listed(pool, connection.user_id)
    assert (record["rotation"], record["credentials_age_days"]) == ("ok", {WEBHOOK_SECRET: 0})


async def test_revoked_and_expired_credentials_do_not_count(
    pool: asyncpg.Pool, vault: CredentialVault, connection: TestConnection
) -> None:
    connection_id = connection.created.connection_id
    await set_credentials(pool, vault, connection_id, MT5_LOGIN % "old")
    await backdate(pool, connection_id, BROKER_CREDENTIALS, 100)
    await set_credentials(pool, vault, connection_id, MT5_LOGIN % "new")
    await pool.execute(
        "UPDATE mt5_credentials SET last_rotated_at = now() - interval '100 days',"
        " expires_at = now() - interval '1 day' WHERE connection_id = $1 AND kind = $2",
        connection_id,
        WEBHOOK_SECRET,
    )

    (record,) = await listed(pool, connection.user_id)

    assert (record["rotation"], record["credentials_age_days"]) == ("ok", {BROKER_CREDENTIALS: 0})


async def test_a_polled_connection_is_listed_as_waiting_for_credentials_until_one_is_stored(
    pool: asyncpg.Pool, vault: CredentialVault, connection: TestConnection
) -> None:
    oanda = await oanda_practice_account(pool, vault, connection)

    async def state() -> tuple[object, ...]:
        records = {r["connection_id"]: r for r in await listed(pool, connection.user_id)}
        record = records[oanda.connection_id]
        return (record["sync_state"], record["status"], record["sync_failures"])

    created = await state()
    await set_credentials(pool, vault, oanda.connection_id, "tok-refused")
    stored = await state()
    # As the poller records a 401 for that token.
    await pool.execute(
        "UPDATE sync_schedule SET credentials_rejected_at = now(), rejected_credential_id ="
        " (SELECT id FROM mt5_credentials WHERE connection_id = $1 AND kind = $2"
        " AND revoked_at IS NULL) WHERE connection_id = $1",
        oanda.connection_id,
        BROKER_CREDENTIALS,
    )
    refused = await state()
    await set_credentials(pool, vault, oanda.connection_id, "tok-replaced")

    assert [created, stored, refused, await state()] == [
        ("waiting_for_credentials", "idle", 0),
        ("scheduled", "idle", 0),
        ("credentials_rejected", "idle", 0),
        ("scheduled", "idle", 0),
    ]
