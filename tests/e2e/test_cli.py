"""The operator commands, run as an operator runs them, against the real database."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from datetime import UTC, datetime

import asyncpg
import orjson
import pytest

from services.ingest.connections import WEBHOOK_SECRET_KIND
from services.ingest.signatures import decode_secret
from services.shared.vault import CredentialVault

pytestmark = pytest.mark.e2e


def poscal_sync(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "services.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **env},
    )


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
    user = poscal_sync("users", "create", "--email", f"{uuid.uuid4().hex}@poscal.test", env=cli_env)
    user_id = orjson.loads(user.stdout)["user_id"]
    result = poscal_sync(
        "connections",
        "create",
        "--user-id",
        user_id,
        "--broker",
        "mt5",
        "--type",
        "demo",
        "--account-number",
        str(uuid.uuid4().int % 10**9),
        "--server",
        "Broker-Demo",
        "--label",
        "my demo",
        env=cli_env,
    )
    assert result.returncode == 0, result.stderr
    printed = orjson.loads(result.stdout)
    connection_id = uuid.UUID(printed["connection_id"])
    assert printed["webhook_url"] == f"https://hooks.poscal.test/v1/webhooks/mt5/{connection_id}"
    secret: str = printed["webhook_secret"]
    assert secret.startswith("whsec_") and len(decode_secret(secret)) == 32
    async with pool.acquire() as conn:
        opened = await vault.open_active(
            conn, connection_id, WEBHOOK_SECRET_KIND, datetime.now(UTC)
        )
        dumped = await conn.fetchval(
            "SELECT string_agg(t::text, '') FROM mt5_credentials t WHERE connection_id = $1",
            connection_id,
        )
    assert opened == [decode_secret(secret)]
    assert secret.removeprefix("whsec_") not in dumped and secret not in dumped
    assert secret not in result.stderr


def test_a_connection_for_an_unknown_user_is_refused_clearly(cli_env: dict[str, str]) -> None:
    result = poscal_sync(
        "connections",
        "create",
        "--user-id",
        str(uuid.uuid4()),
        "--type",
        "live",
        "--account-number",
        "1",
        "--server",
        "S",
        "--label",
        "x",
        env=cli_env,
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
