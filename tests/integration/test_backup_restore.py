"""Backups that restore: pgBackRest with infra/pgbackrest/'s configuration takes an encrypted
base backup of a Postgres archiving its WAL while the writer's SQL writes the journal, and a
fresh cluster restored to a named point in time holds exactly the journal of that point."""

from __future__ import annotations

import asyncio
import json
import secrets
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from services.devstack.demo import encode_body
from services.devstack.postgres import EmbeddedPostgres
from services.shared.brokers.mt5 import BROKER
from services.shared.canonical import CanonicalBatch
from services.shared.migrations import apply_migrations
from services.shared.vault import CredentialVault
from services.writer.repository import JournalRepository
from tests.support.builders import (
    TestConnection,
    deposit_deal,
    fixture_deals,
    mt5_body,
    new_connection,
    raw_event,
)
from tests.support.pgbackrest import BackupRepository, archiving_settings

pytestmark = pytest.mark.integration

POINT = "before-the-later-writes"
COMPOSE = Path(__file__).resolve().parents[2] / "infra" / "docker-compose.yml"
# Every table's rows as text, sorted: the whole content of the database's own schemas.
Tables = dict[str, list[str]]


def webhook(
    connection: TestConnection, deals: list[dict[str, Any]], balance: str
) -> CanonicalBatch:
    """What the normalizer makes of one MT5 webhook carrying these deals."""
    body = encode_body(mt5_body(connection.login, deals, balance=balance))
    return BROKER.map(raw_event(connection, body)).batch


async def every_table(conn: asyncpg.Connection) -> Tables:
    names = await conn.fetch(
        "SELECT format('%I.%I', schemaname, tablename) FROM pg_tables"
        " WHERE schemaname NOT LIKE 'pg\\_%' AND schemaname <> 'information_schema'"
    )
    return {
        name: sorted(row[0] for row in await conn.fetch(f"SELECT t::text FROM {name} t"))  # noqa: S608 - names from the catalog
        for (name,) in names
    }


async def promoted(dsn: str) -> asyncpg.Connection:
    """A session on a restored cluster once its recovery reached the target and it promoted."""
    async with asyncio.timeout(30):
        while True:
            try:
                conn = await asyncpg.connect(dsn)
            except (asyncpg.CannotConnectNowError, OSError):
                await asyncio.sleep(0.1)
                continue
            if not await conn.fetchval("SELECT pg_is_in_recovery()"):
                return conn
            await conn.close()
            await asyncio.sleep(0.1)


@dataclass(frozen=True)
class Drill:
    at_the_point: Tables
    at_the_end: Tables
    restored: Tables
    before_backup: CanonicalBatch
    after_backup: CanonicalBatch
    after_the_point: CanonicalBatch
    restored_sync_events: set[uuid.UUID]
    backups: BackupRepository
    passphrase: str


@pytest.fixture(scope="module")
async def drill(vault: CredentialVault) -> AsyncIterator[Drill]:
    passphrase = secrets.token_urlsafe(32)
    repository = JournalRepository()
    deal_1, deal_2, deal_3 = fixture_deals()
    with BackupRepository(passphrase) as backups:
        primary = EmbeddedPostgres(
            database="poscal_backup",
            log_path=backups.directory / "primary.log",
            # Torn-page protection on, as production runs (the embedded default is off).
            settings=archiving_settings() | {"full_page_writes": "on"},
            environment=backups.environment(),
        )
        with primary:
            backups.configure(
                data_directory=primary.data_directory,
                socket_directory=primary.socket_directory,
                port=primary.port,
                user=primary.user,
            )
            await apply_migrations(primary.dsn)
            conn = await asyncpg.connect(primary.dsn)
            try:
                connection = await new_connection(conn, vault)
                before_backup = webhook(connection, [deal_1, deposit_deal(9001)], "1500.00")
                await repository.apply(conn, [before_backup])
                backups.run("stanza-create")
                backups.run("--type=full", "backup")
                # Only in the WAL archived from here on, not in the base backup.
                after_backup = webhook(connection, [deal_2], "1520.00")
                await repository.apply(conn, [after_backup])
                at_the_point = await every_table(conn)
                await conn.execute("SELECT pg_create_restore_point($1)", POINT)
                after_the_point = webhook(
                    connection, [deal_3, deposit_deal(9002, "250.00")], "1830.00"
                )
                await repository.apply(conn, [after_the_point])
                at_the_end = await every_table(conn)
            finally:
                await conn.close()
            # Switches to a new WAL segment and waits until the one holding the point (and all
            # before it) is in the repository.
            backups.run("check")
        target = backups.new_data_directory("restored")
        backups.run(
            "restore",
            f"--pg1-path={target}",
            "--type=name",
            f"--target={POINT}",
            "--target-action=promote",
            # A drill's cluster must never archive into the production repository.
            "--archive-mode=off",
        )
        restored_cluster = EmbeddedPostgres(
            database="poscal_backup",
            log_path=backups.directory / "restored.log",
            data_directory=target,
            environment=backups.environment(),
        )
        with restored_cluster:
            conn = await promoted(restored_cluster.dsn)
            try:
                restored = await every_table(conn)
                restored_sync_events = {
                    row[0] for row in await conn.fetch("SELECT event_id FROM sync_events")
                }
            finally:
                await conn.close()
        yield Drill(
            at_the_point,
            at_the_end,
            restored,
            before_backup,
            after_backup,
            after_the_point,
            restored_sync_events,
            backups,
            passphrase,
        )


JOURNAL_TABLES = (
    "public.broker_fills",
    "public.broker_cash_movements",
    "public.trading_journal",
    "public.position_folds",
    "public.trading_accounts",
    "public.sync_events",
)


async def test_the_restored_cluster_holds_exactly_every_table_as_it_was_at_the_point(
    drill: Drill,
) -> None:
    assert {name: bool(drill.at_the_point[name]) for name in JOURNAL_TABLES} == dict.fromkeys(
        JOURNAL_TABLES, True
    )
    assert drill.restored == drill.at_the_point


async def test_writes_after_the_point_are_absent_from_the_restored_cluster(drill: Drill) -> None:
    later = {
        name: set(rows) - set(drill.at_the_point[name])
        for name, rows in drill.at_the_end.items()
        if set(rows) - set(drill.at_the_point[name])
    }
    assert set(JOURNAL_TABLES) <= set(later)  # every journal table changed after the point
    assert {name: rows & set(drill.restored[name]) for name, rows in later.items()} == {
        name: set() for name in later
    }
    assert drill.after_the_point.event_id not in drill.restored_sync_events


async def test_events_written_after_the_base_backup_come_back_from_the_archived_wal(
    drill: Drill,
) -> None:
    assert {drill.before_backup.event_id, drill.after_backup.event_id} <= (
        drill.restored_sync_events
    )


async def test_every_file_in_the_repository_is_encrypted(drill: Drill) -> None:
    files = [path for path in drill.backups.repository.rglob("*") if path.is_file()]
    archived = [
        path for path in files if "archive" in path.relative_to(drill.backups.repository).parts
    ]
    assert archived, "no WAL was archived"
    # OpenSSL's salted header, where compressed files would start with gzip's or zstd's magic
    # and the info files with plain INI.
    assert {path.read_bytes()[:8] for path in files} == {b"Salted__"}


async def test_the_repository_cannot_be_read_without_the_passphrase(drill: Drill) -> None:
    def info(environment: dict[str, str]) -> Any:
        ran = drill.backups.run("--output=json", "info", environment=environment, check=False)
        # strict=False: the error for a wrong passphrase quotes what it decrypted to, control
        # characters included, unescaped.
        return json.loads(ran.stdout, strict=False) if ran.returncode == 0 else ran.stderr

    [readable] = info(drill.backups.environment())
    assert (readable["status"]["code"], [b["type"] for b in readable["backup"]]) == (0, ["full"])

    without = drill.backups.environment(with_passphrase=False)
    assert "requires option: repo1-cipher-pass" in info(without)
    [wrong] = info(without | {"PGBACKREST_REPO1_CIPHER_PASS": secrets.token_urlsafe(32)})
    assert (wrong["status"]["code"] != 0, wrong["backup"]) == (True, [])


def test_the_compose_postgres_archives_with_the_same_settings() -> None:
    compose = COMPOSE.read_text()
    assert [
        f"{n}={v}" for n, v in archiving_settings().items() if f"- {n}={v}\n" not in compose
    ] == []


async def test_the_passphrase_is_in_no_log_and_nowhere_but_its_secret_file(drill: Drill) -> None:
    holding = {
        str(path.relative_to(drill.backups.directory))
        for path in drill.backups.directory.rglob("*")
        if path.is_file() and drill.passphrase.encode() in path.read_bytes()
    }
    assert holding == {"conf.d/cipher.conf"}
    assert any(drill.backups.logs.iterdir()), "pgBackRest wrote no log"
