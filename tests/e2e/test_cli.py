"""The operator commands, run as an operator runs them, against the real database."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from services.shared.credential_kinds import BROKER_CREDENTIALS, WEBHOOK_PUBLIC_KEY, WEBHOOK_SECRET
from services.shared.crypto import LocalKeyEncryptionKey, new_master_key_base64
from services.shared.database import create_pool
from services.shared.signatures import decode_secret
from services.shared.vault import CredentialVault
from tests.support.builders import TestConnection, new_connection
from tests.support.scratch_database import scratch_database

pytestmark = pytest.mark.e2e


def poscal_sync(
    *args: str, env: dict[str, str], stdin: str = ""
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "services.cli", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **env},
    )


def connections_create(cli_env: dict[str, str], **options: str) -> subprocess.CompletedProcess[str]:
    """`connections create` with each option as the operator types it, in the order given:
    `account_number="1"` is `--account-number 1`."""
    flags: list[str] = []
    for name, value in options.items():
        flags += [f"--{name.replace('_', '-')}", value]
    return poscal_sync("connections", "create", *flags, env=cli_env)


def new_user(cli_env: dict[str, str]) -> str:
    created = poscal_sync(
        "users", "create", "--email", f"{uuid.uuid4().hex}@poscal.test", env=cli_env
    )
    user_id: str = orjson.loads(created.stdout)["user_id"]
    return user_id


@pytest.fixture
def cli_env(database_url: str, master_key: str) -> dict[str, str]:
    return {
        "DATABASE_URL": database_url,
        "POSCAL_MASTER_KEY": master_key,
        "POSCAL_INGEST_PUBLIC_URL": "https://hooks.poscal.test",
    }


def test_migrate_reports_that_nothing_is_pending(cli_env: dict[str, str]) -> None:
    result = poscal_sync("migrate", env=cli_env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "applied 0 migration(s)"


async def test_creating_a_connection_prints_its_secret_once_and_stores_it_encrypted(
    cli_env: dict[str, str], pool: asyncpg.Pool, vault: CredentialVault
) -> None:
    result = connections_create(
        cli_env,
        user_id=new_user(cli_env),
        broker="mt5",
        type="demo",
        account_number=str(uuid.uuid4().int % 10**9),
        server="Broker-Demo",
        label="my demo",
    )
    assert result.returncode == 0, result.stderr
    printed = orjson.loads(result.stdout)
    connection_id = uuid.UUID(printed["connection_id"])
    # The URL ends in a random id of its own, so that it can be replaced (rotate-url).
    path_id = await pool.fetchval(
        "SELECT webhook_path_id FROM mt5_connections WHERE id = $1", connection_id
    )
    assert path_id != connection_id
    assert printed["webhook_url"] == f"https://hooks.poscal.test/v1/webhooks/mt5/{path_id}"
    secret: str = printed["webhook_secret"]
    assert secret.startswith("whsec_") and len(decode_secret(secret)) == 32
    async with pool.acquire() as conn:
        opened = await vault.open_active(conn, connection_id, WEBHOOK_SECRET, datetime.now(UTC))
        dumped = await conn.fetchval(
            "SELECT string_agg(t::text, '') FROM mt5_credentials t WHERE connection_id = $1",
            connection_id,
        )
    assert opened == [decode_secret(secret)]
    assert secret.removeprefix("whsec_") not in dumped and secret not in dumped
    assert secret not in result.stderr


def test_a_connection_for_an_unknown_user_is_refused_clearly(cli_env: dict[str, str]) -> None:
    result = connections_create(
        cli_env, user_id=str(uuid.uuid4()), type="live", account_number="1", server="S", label="x"
    )
    assert result.returncode == 1
    assert result.stderr.startswith("error: no user") and result.stdout == ""


def test_creating_a_connection_without_a_master_key_is_refused(cli_env: dict[str, str]) -> None:
    env = {k: v for k, v in cli_env.items() if k != "POSCAL_MASTER_KEY"}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "services.cli",
            "connections",
            "create",
            "--user-id",
            str(uuid.uuid4()),
            "--type",
            "demo",
            "--account-number",
            "1",
            "--server",
            "S",
            "--label",
            "x",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if k != "POSCAL_MASTER_KEY"} | env,
    )
    assert result.returncode == 2 and "POSCAL_MASTER_KEY" in result.stderr


# --- connections set-credentials / rotate-secret / add-public-key / list -------------------


@pytest.fixture
async def connection(pool: asyncpg.Pool, vault: CredentialVault) -> TestConnection:
    async with pool.acquire() as conn:
        return await new_connection(conn, vault)


async def test_rotating_the_url_prints_a_new_one_and_keeps_the_connection(
    cli_env: dict[str, str], pool: asyncpg.Pool, connection: TestConnection
) -> None:
    connection_id = connection.created.connection_id
    result = poscal_sync("connections", "rotate-url", str(connection_id), env=cli_env)
    assert result.returncode == 0, result.stderr
    printed = orjson.loads(result.stdout)
    path_id = await pool.fetchval(
        "SELECT webhook_path_id FROM mt5_connections WHERE id = $1", connection_id
    )
    assert printed == {
        "connection_id": str(connection_id),
        "webhook_url": f"https://hooks.poscal.test/v1/webhooks/mt5/{path_id}",
    }
    assert path_id != connection.webhook_path_id
    listed = poscal_sync("connections", "list", "--user-id", str(connection.user_id), env=cli_env)
    assert orjson.loads(listed.stdout)["webhook_url"] == printed["webhook_url"]


def test_rotating_the_url_of_no_connection_is_refused_clearly(cli_env: dict[str, str]) -> None:
    result = poscal_sync("connections", "rotate-url", str(uuid.uuid4()), env=cli_env)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.startswith("error: no connection")


async def test_an_operator_locks_and_unlocks_a_connections_webhooks(
    cli_env: dict[str, str], pool: asyncpg.Pool, connection: TestConnection
) -> None:
    connection_id = str(connection.created.connection_id)
    locked = poscal_sync("connections", "lock", connection_id, "--reason", "key leak", env=cli_env)
    again = poscal_sync("connections", "lock", connection_id, env=cli_env)
    row = await pool.fetchrow(
        "SELECT lifecycle, last_error FROM mt5_connections WHERE id = $1",
        connection.created.connection_id,
    )
    unlocked = poscal_sync("connections", "unlock", connection_id, env=cli_env)
    assert locked.returncode == again.returncode == unlocked.returncode == 0, locked.stderr
    assert row is not None and tuple(row) == ("locked", "key leak")
    assert [orjson.loads(r.stdout)["changed"] for r in (locked, again, unlocked)] == [
        True,
        False,
        True,
    ]
    assert orjson.loads(unlocked.stdout)["lifecycle"] == "active"


async def test_broker_credentials_are_read_from_standard_input_and_never_printed(
    cli_env: dict[str, str], pool: asyncpg.Pool, vault: CredentialVault, connection: TestConnection
) -> None:
    connection_id = connection.created.connection_id
    credentials = '{"login": "52557820", "password": "pw-7c1d0e", "server": "X-Demo"}'

    result = poscal_sync(
        "connections", "set-credentials", str(connection_id), env=cli_env, stdin=credentials
    )

    assert result.returncode == 0, result.stderr
    printed = orjson.loads(result.stdout)
    assert set(printed) == {"connection_id", "stored_at"}
    assert printed["connection_id"] == str(connection_id)
    assert "pw-7c1d0e" not in result.stdout + result.stderr
    async with pool.acquire() as conn:
        (opened,) = await vault.open_active(
            conn, connection_id, BROKER_CREDENTIALS, datetime.now(UTC)
        )
    assert orjson.loads(opened)["password"] == "pw-7c1d0e"


@pytest.mark.parametrize(
    ("stdin", "complaint"),
    [
        ("", "empty"),
        ('{"login": "1", "password": "pw-7c1d0e"}', "'server' as a non-empty string"),
    ],
)
def test_empty_or_incomplete_broker_credentials_are_refused_clearly(
    cli_env: dict[str, str], connection: TestConnection, stdin: str, complaint: str
) -> None:
    result = poscal_sync(
        "connections",
        "set-credentials",
        str(connection.created.connection_id),
        env=cli_env,
        stdin=stdin,
    )
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.startswith("error: ") and complaint in result.stderr
    assert "pw-7c1d0e" not in result.stderr


async def test_rotating_the_secret_prints_the_new_one_once_and_the_old_ones_end(
    cli_env: dict[str, str], pool: asyncpg.Pool, vault: CredentialVault, connection: TestConnection
) -> None:
    connection_id = connection.created.connection_id

    result = poscal_sync(
        "connections", "rotate-secret", str(connection_id), "--overlap", "30m", env=cli_env
    )

    assert result.returncode == 0, result.stderr
    printed = orjson.loads(result.stdout)
    assert set(printed) == {"connection_id", "webhook_secret", "previous_secrets_expire_at"}
    expire_at = datetime.fromisoformat(printed["previous_secrets_expire_at"])
    assert timedelta(minutes=29) < expire_at - datetime.now(UTC) <= timedelta(minutes=30)
    new = decode_secret(printed["webhook_secret"])
    async with pool.acquire() as conn:
        assert await vault.open_active(conn, connection_id, WEBHOOK_SECRET, datetime.now(UTC)) == [
            new,
            decode_secret(connection.created.webhook_secret),
        ]
        assert await vault.open_active(
            conn, connection_id, WEBHOOK_SECRET, expire_at + timedelta(seconds=1)
        ) == [new]


@pytest.mark.parametrize("overlap", ["24", "1w", "-1h", "31d"])
def test_a_bad_overlap_is_refused_clearly(
    cli_env: dict[str, str], connection: TestConnection, overlap: str
) -> None:
    result = poscal_sync(
        "connections",
        "rotate-secret",
        str(connection.created.connection_id),
        f"--overlap={overlap}",
        env=cli_env,
    )
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.startswith("error: --overlap")


@pytest.mark.parametrize(
    "command",
    [
        ["rotate-secret"],
        ["set-credentials"],
        ["add-public-key", "--key", "whpk_" + base64.b64encode(b"\x11" * 32).decode()],
    ],
)
def test_every_connection_command_refuses_an_unknown_connection(
    cli_env: dict[str, str], command: list[str]
) -> None:
    unknown = str(uuid.uuid4())
    result = poscal_sync("connections", command[0], unknown, *command[1:], env=cli_env, stdin="tok")
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.strip() == f"error: no connection {unknown}"


async def test_a_public_key_is_added_and_a_malformed_one_refused(
    cli_env: dict[str, str], pool: asyncpg.Pool, vault: CredentialVault, connection: TestConnection
) -> None:
    connection_id = connection.created.connection_id
    raw = Ed25519PrivateKey.generate().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)

    added = poscal_sync(
        "connections",
        "add-public-key",
        str(connection_id),
        "--key",
        "whpk_" + base64.b64encode(raw).decode(),
        env=cli_env,
    )
    malformed = poscal_sync(
        "connections",
        "add-public-key",
        str(connection_id),
        "--key",
        "whpk_" + base64.b64encode(raw[:31]).decode(),
        env=cli_env,
    )

    assert added.returncode == 0, added.stderr
    assert set(orjson.loads(added.stdout)) == {"connection_id", "added_at"}
    assert malformed.returncode == 1
    assert "not an Ed25519 public key (32 bytes, got 31)" in malformed.stderr
    async with pool.acquire() as conn:
        assert await vault.open_active(
            conn, connection_id, WEBHOOK_PUBLIC_KEY, datetime.now(UTC)
        ) == [raw]


async def test_the_listing_is_json_lines_and_rotation_due_keeps_only_those_due(
    cli_env: dict[str, str], pool: asyncpg.Pool, connection: TestConnection
) -> None:
    await pool.execute(
        "UPDATE mt5_credentials SET last_rotated_at = now() - interval '95 days'"
        " WHERE connection_id = $1",
        connection.created.connection_id,
    )
    user = ["--user-id", str(connection.user_id)]

    everything = poscal_sync("connections", "list", *user, env=cli_env)
    due = poscal_sync("connections", "list", "--rotation-due", *user, env=cli_env)
    # Listing opens no credential: it needs no master key.
    keyless = {k: v for k, v in cli_env.items() if k != "POSCAL_MASTER_KEY"}
    without_key = poscal_sync("connections", "list", *user, env=keyless | {"POSCAL_MASTER_KEY": ""})

    assert everything.returncode == due.returncode == 0, everything.stderr + due.stderr
    (record,) = [orjson.loads(line) for line in everything.stdout.splitlines()]
    assert record["connection_id"] == str(connection.created.connection_id)
    assert (record["rotation"], record["credentials_age_days"]) == ("due", {"webhook_secret": 95})
    assert due.stdout == everything.stdout
    assert without_key.returncode == 0 and without_key.stdout == everything.stdout


# --- keys ----------------------------------------------------------------------------------


def test_a_new_master_key_is_base64_of_32_random_bytes(cli_env: dict[str, str]) -> None:
    first, second = (poscal_sync("keys", "new", env=cli_env) for _ in range(2))
    assert first.returncode == 0
    assert len(base64.b64decode(first.stdout.strip(), validate=True)) == 32
    assert first.stdout != second.stdout


async def test_rotating_the_master_key_follows_the_runbook(
    cli_env: dict[str, str], database_url: str
) -> None:
    old_key, new_key = new_master_key_base64(), new_master_key_base64()
    old = LocalKeyEncryptionKey.from_base64(old_key)
    async with scratch_database(database_url) as dsn:
        pool = await create_pool(dsn, max_size=2)
        try:
            async with pool.acquire() as conn:
                connections = [await new_connection(conn, CredentialVault(old)) for _ in range(3)]
            env = cli_env | {"DATABASE_URL": dsn, "POSCAL_MASTER_KEY": new_key}
            mid_rotation = env | {"POSCAL_PREVIOUS_MASTER_KEYS": old_key}

            # Without the old key, the data keys under it cannot be re-wrapped: refused.
            refused = poscal_sync("keys", "rotate", env=env)
            interrupted = poscal_sync("keys", "rotate", "--limit", "1", env=mid_rotation)
            finished = poscal_sync("keys", "rotate", env=mid_rotation)
            # Step 3, the old key dropped: everything opens with the new key alone.
            rotate_secret = poscal_sync(
                "connections",
                "rotate-secret",
                str(connections[0].created.connection_id),
                env=env,
            )
        finally:
            await pool.close()

    assert refused.returncode == 1 and old.key_id in refused.stderr
    assert old_key not in refused.stderr + refused.stdout
    new_id = LocalKeyEncryptionKey.from_base64(new_key).key_id
    assert orjson.loads(interrupted.stdout) == {
        "kek_id": new_id,
        "rewrapped": 1,
        "already_current": 0,
        "remaining": 2,
    }
    assert orjson.loads(finished.stdout) == {
        "kek_id": new_id,
        "rewrapped": 2,
        "already_current": 1,
        "remaining": 0,
    }
    assert rotate_secret.returncode == 0, rotate_secret.stderr


def test_rotating_without_a_master_key_is_refused(cli_env: dict[str, str]) -> None:
    result = poscal_sync("keys", "rotate", env=cli_env | {"POSCAL_MASTER_KEY": ""})
    assert result.returncode == 2 and "POSCAL_MASTER_KEY" in result.stderr


# --- polled brokers -------------------------------------------------------------------------


def oanda_connection(cli_env: dict[str, str], user_id: str, kind: str) -> dict[str, object]:
    result = connections_create(
        cli_env,
        user_id=user_id,
        broker="oanda",
        type=kind,
        account_number=f"101-004-{uuid.uuid4().int % 10**7:07d}-001",
        label="OANDA",
        api_url="http://127.0.0.1:9/oanda",
    )
    assert result.returncode == 0, result.stderr
    record: dict[str, object] = orjson.loads(result.stdout)
    return record


async def test_an_oanda_connection_is_put_on_the_poll_schedule_with_its_api_url(
    cli_env: dict[str, str], pool: asyncpg.Pool
) -> None:
    created = oanda_connection(cli_env, new_user(cli_env), "demo")
    assert created["polled"] is True
    assert "set-credentials" in str(created["next"])
    connection_id = uuid.UUID(str(created["connection_id"]))
    row = await pool.fetchrow(
        "SELECT c.api_url, s.interval_seconds FROM mt5_connections c"
        " JOIN sync_schedule s ON s.connection_id = c.id WHERE c.id = $1",
        connection_id,
    )
    assert row is not None and dict(row) == {
        "api_url": "http://127.0.0.1:9/oanda",
        "interval_seconds": 60,
    }


def test_an_oanda_connection_is_listed_as_waiting_for_credentials_until_they_are_set(
    cli_env: dict[str, str],
) -> None:
    user_id = new_user(cli_env)
    created = oanda_connection(cli_env, user_id, "demo")

    def sync_state() -> object:
        listing = poscal_sync("connections", "list", "--user-id", user_id, env=cli_env)
        assert listing.returncode == 0, listing.stderr
        (record,) = [orjson.loads(line) for line in listing.stdout.splitlines()]
        return (record["sync_state"], record["status"], record["sync_failures"])

    before = sync_state()
    stored = poscal_sync(
        "connections", "set-credentials", str(created["connection_id"]), env=cli_env, stdin="tok"
    )
    assert stored.returncode == 0, stored.stderr

    assert [before, sync_state()] == [
        ("waiting_for_credentials", "idle", 0),
        ("scheduled", "idle", 0),
    ]


def test_a_bad_api_url_is_refused_clearly(cli_env: dict[str, str]) -> None:
    result = connections_create(
        cli_env,
        user_id=new_user(cli_env),
        broker="oanda",
        type="demo",
        account_number="101-1",
        label="x",
        api_url="ftp://example.test",
    )
    assert result.returncode == 1
    assert "--api-url must be an http(s) base URL" in result.stderr


async def test_enable_live_refuses_until_a_demo_connection_of_the_broker_has_synced(
    cli_env: dict[str, str], pool: asyncpg.Pool
) -> None:
    user_id = new_user(cli_env)
    live = oanda_connection(cli_env, user_id, "live")
    demo = oanda_connection(cli_env, user_id, "demo")
    assert "enable-live" in str(live["next"])

    refused = poscal_sync("connections", "enable-live", str(live["connection_id"]), env=cli_env)
    assert refused.returncode == 1
    assert "no oanda demo connection that has synced" in refused.stderr

    await pool.execute(
        "UPDATE sync_schedule SET last_success_at = now() WHERE connection_id = $1",
        uuid.UUID(str(demo["connection_id"])),
    )
    enabled = poscal_sync("connections", "enable-live", str(live["connection_id"]), env=cli_env)
    assert enabled.returncode == 0, enabled.stderr
    assert orjson.loads(enabled.stdout)["live_enabled_at"]

    demo_refused = poscal_sync(
        "connections", "enable-live", str(demo["connection_id"]), env=cli_env
    )
    assert demo_refused.returncode == 1 and "only live ones need enabling" in demo_refused.stderr


def test_ibkr_credentials_need_a_token_and_a_query_id(cli_env: dict[str, str]) -> None:
    result = connections_create(
        cli_env,
        user_id=new_user(cli_env),
        broker="ibkr",
        type="demo",
        account_number=f"U{uuid.uuid4().int % 10**7}",
        label="IBKR",
    )
    connection_id = str(orjson.loads(result.stdout)["connection_id"])
    incomplete = poscal_sync(
        "connections", "set-credentials", connection_id, env=cli_env, stdin='{"token": "1"}'
    )
    assert incomplete.returncode == 1 and "'query_id'" in incomplete.stderr
    stored = poscal_sync(
        "connections",
        "set-credentials",
        connection_id,
        env=cli_env,
        stdin='{"token": "271828", "query_id": "987654"}',
    )
    assert stored.returncode == 0, stored.stderr
    assert "271828" not in stored.stdout + stored.stderr


def test_normalize_prints_what_a_payload_would_become_without_kafka_or_postgres() -> None:
    page = "tests/fixtures/constructed/oanda_open_reduce_close_page.json"
    result = poscal_sync(
        "normalize", "--broker", "oanda", page, env={"DATABASE_URL": "postgresql://nowhere:1/x"}
    )
    assert result.returncode == 0, result.stderr
    kinds = [orjson.loads(line)["kind"] for line in result.stdout.splitlines()]
    assert kinds.count("fill") >= 3 and "skipped" not in kinds[: kinds.count("fill")]


async def test_a_leaked_public_key_is_revoked_and_stops_verifying(
    cli_env: dict[str, str], pool: asyncpg.Pool, vault: CredentialVault, connection: TestConnection
) -> None:
    connection_id = str(connection.created.connection_id)
    leaked, kept = (
        "whpk_"
        + base64.b64encode(
            Ed25519PrivateKey.generate().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        ).decode()
        for _ in range(2)
    )
    for key in (leaked, kept):
        assert (
            poscal_sync(
                "connections", "add-public-key", connection_id, "--key", key, env=cli_env
            ).returncode
            == 0
        )

    revoked = poscal_sync(
        "connections", "revoke-public-key", connection_id, "--key", leaked, env=cli_env
    )
    again = poscal_sync(
        "connections", "revoke-public-key", connection_id, "--key", leaked, env=cli_env
    )

    assert revoked.returncode == 0, revoked.stderr
    assert set(orjson.loads(revoked.stdout)) == {"connection_id", "revoked_at"}
    assert again.returncode == 1 and "is not an active webhook public key" in again.stderr
    async with pool.acquire() as conn:
        active = await vault.open_active(
            conn, connection.created.connection_id, WEBHOOK_PUBLIC_KEY, datetime.now(UTC)
        )
    assert active == [base64.b64decode(kept.removeprefix("whpk_"))]
