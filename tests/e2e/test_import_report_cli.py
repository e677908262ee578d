"""`poscal-sync import mt5-report`, run as an operator runs it against the real database and
broker: the report's readable deals go onto the raw topic, the rows it cannot take are listed
with their row; a file, connection or clock it cannot import is refused and publishes nothing."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import asyncpg
import orjson
import pytest

from services.shared.connection_admin.connections import create_user
from services.shared.envelope import RawEvent
from services.shared.settings import Topics
from services.shared.vault import CredentialVault
from tests.support.builders import SERVER, connect_broker_account, new_connection
from tests.support.kafka import read_topic
from tests.support.mt5_reports import HEDGING_HTML, HEDGING_XLSX, report_of

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
def cli_env(database_url: str, kafka_bootstrap: str, topics: Topics) -> dict[str, str]:
    return {
        "DATABASE_URL": database_url,
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "POSCAL_TOPIC_RAW": topics.raw,
    }


def import_report(
    cli_env: dict[str, str], connection_id: uuid.UUID | str, path: Path, *options: str
) -> subprocess.CompletedProcess[str]:
    return poscal_sync(
        "import", "mt5-report", "--connection", str(connection_id), *options, str(path), env=cli_env
    )


async def mt5_connection(pool: asyncpg.Pool, vault: CredentialVault) -> tuple[uuid.UUID, int]:
    async with pool.acquire() as conn:
        connection = await new_connection(conn, vault)
    return connection.created.connection_id, connection.login


@pytest.mark.parametrize("fixture", [HEDGING_HTML, HEDGING_XLSX], ids=["html", "xlsx"])
async def test_a_report_is_published_as_the_connections_deals_and_unkeyable_rows_are_listed(
    cli_env: dict[str, str],
    pool: asyncpg.Pool,
    vault: CredentialVault,
    kafka_bootstrap: str,
    topics: Topics,
    tmp_path: Path,
    fixture: Path,
) -> None:
    connection_id, login = await mt5_connection(pool, vault)
    path = tmp_path / fixture.name
    path.write_bytes(report_of(fixture, login, SERVER))

    result = import_report(cli_env, connection_id, path, "--server-tz", "new-york-close")

    assert result.returncode == 3, result.stderr  # imported, with rows left out
    summary = orjson.loads(result.stdout)
    assert (summary["login"], summary["deals_read"], summary["deals_imported"]) == (login, 17, 14)
    assert [(r["deal"], r["code"]) for r in summary["refused"]] == [
        ("5012", "position_unknown"),
        ("5013", "position_unknown"),
        ("5015", "position_unknown"),
    ]
    first_row = summary["refused"][0]["row"]
    assert f"{path.name}: row {first_row} (deal 5012) not imported: position_unknown:" in (
        result.stderr
    )
    [record] = await read_topic(kafka_bootstrap, topics.raw, expect=1)
    event = RawEvent.model_validate_json(record.value or b"")
    assert (event.source, event.connection.connection_id) == ("import", connection_id)
    body = orjson.loads(event.body)
    assert (body["kind"], body["clock"], body["account"]["login"]) == (
        "mt5.report",
        "new-york-close",
        login,
    )
    assert len(body["deals"]) == 14 and summary["events_published"] == 1


async def test_importing_the_same_report_again_publishes_the_same_events(
    cli_env: dict[str, str],
    pool: asyncpg.Pool,
    vault: CredentialVault,
    kafka_bootstrap: str,
    topics: Topics,
    tmp_path: Path,
) -> None:
    connection_id, login = await mt5_connection(pool, vault)
    path = tmp_path / "ReportHistory.html"
    path.write_bytes(report_of(HEDGING_HTML, login, SERVER))
    for _ in range(2):
        result = import_report(cli_env, connection_id, path, "--server-tz", "UTC+2")
        assert result.returncode == 3, result.stderr
    first, again = [
        RawEvent.model_validate_json(r.value or b"")
        for r in await read_topic(kafka_bootstrap, topics.raw, expect=2)
    ]
    assert (first.event_id, first.delivery_id) == (again.event_id, again.delivery_id)


async def refused(
    cli_env: dict[str, str],
    kafka_bootstrap: str,
    topics: Topics,
    connection_id: uuid.UUID | str,
    path: Path,
    *options: str,
) -> str:
    """What the import said on stderr, once it has refused and published nothing."""
    result = import_report(cli_env, connection_id, path, *options)
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert result.stdout == ""
    assert await read_topic(kafka_bootstrap, topics.raw) == []
    return result.stderr


async def test_a_file_or_connection_it_cannot_import_is_refused_and_nothing_is_published(
    cli_env: dict[str, str],
    pool: asyncpg.Pool,
    vault: CredentialVault,
    kafka_bootstrap: str,
    topics: Topics,
    tmp_path: Path,
) -> None:
    connection_id, login = await mt5_connection(pool, vault)
    report = tmp_path / "ReportHistory.html"
    report.write_bytes(report_of(HEDGING_HTML, login, SERVER))
    tz = ("--server-tz", "new-york-close")

    def say(stderr: str) -> str:
        return stderr.strip().removeprefix("error: ")

    not_a_report = tmp_path / "trades.csv"
    not_a_report.write_text("Time,Deal,Symbol\n2024.01.09 10:15:20,5002,EURUSD\n")
    message = say(await refused(cli_env, kafka_bootstrap, topics, connection_id, not_a_report, *tz))
    assert message == f"{not_a_report} is not an MT5 history report: the file holds no table"

    text = report.read_bytes().decode("utf-16")
    no_deals = tmp_path / "positions-only.html"
    no_deals.write_bytes(
        (text[: text.index("<b>Deals</b>")] + text[text.index("<b>Open Positions</b>") :]).encode(
            "utf-16"
        )
    )
    message = say(await refused(cli_env, kafka_bootstrap, topics, connection_id, no_deals, *tz))
    assert message.startswith(f"{no_deals} is not an MT5 history report: no Deals table was found")

    missing = tmp_path / "missing.html"
    message = say(await refused(cli_env, kafka_bootstrap, topics, connection_id, missing, *tz))
    assert message == f"cannot read {missing}: No such file or directory"

    message = say(await refused(cli_env, kafka_bootstrap, topics, connection_id, report))
    assert message.startswith(
        "the report's times are the trade server's wall clock, and which zone that is must be"
        " given: --server-tz new-york-close"
    )
    bad_tz = ("--server-tz", "Mars/Olympus")
    message = say(await refused(cli_env, kafka_bootstrap, topics, connection_id, report, *bad_tz))
    assert message.startswith("--server-tz: 'Mars/Olympus' is not a server clock: give")

    unknown = uuid.uuid4()
    message = say(await refused(cli_env, kafka_bootstrap, topics, unknown, report, *tz))
    assert message == f"no connection {unknown}"

    async with pool.acquire() as conn:
        user_id = await create_user(conn, f"{uuid.uuid4().hex}@poscal.test")
        oanda = await connect_broker_account(
            conn, vault, user_id, "oanda", "101-004-1234567-001", api_url="http://127.0.0.1:1"
        )
    message = say(await refused(cli_env, kafka_bootstrap, topics, oanda.connection_id, report, *tz))
    assert message == (f"connection {oanda.connection_id} is a oanda connection, not an MT5 one")

    other_connection, other_login = await mt5_connection(pool, vault)
    message = say(await refused(cli_env, kafka_bootstrap, topics, other_connection, report, *tz))
    assert message == (
        f"the report is not this connection's account: login {login}, the connection's is"
        f" {other_login}"
    )

    await pool.execute(
        "UPDATE mt5_connections SET lifecycle = 'paused' WHERE id = $1", connection_id
    )
    message = say(await refused(cli_env, kafka_bootstrap, topics, connection_id, report, *tz))
    assert message == f"connection {connection_id} is paused"
