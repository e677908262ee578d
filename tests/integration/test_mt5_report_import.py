"""A history report imported by `poscal-sync import mt5-report` goes through the real raw topic,
normalizer and writer into the journal; importing it twice is importing it once, and importing
what the Expert Advisor's webhooks already delivered changes nothing."""

from __future__ import annotations

import io
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from services.cli.import_report import PARTLY_IMPORTED, import_report
from services.cli.settings import CliSettings
from services.devstack.demo import encode_body, signed_headers
from services.shared.settings import Topics
from tests.support.builders import SERVER, TestConnection
from tests.support.ingest import IngestStarter, RecordingSink
from tests.support.mt5_reports import HEDGING_HTML, ea_deals, report_of
from tests.support.pipeline import RunningPipeline, running_pipeline

pytestmark = pytest.mark.integration


@pytest.fixture
def settings(database_url: str, kafka_bootstrap: str, topics: Topics) -> CliSettings:
    return CliSettings(
        database_url=database_url, kafka_bootstrap_servers=kafka_bootstrap, topics=topics
    )


@pytest.fixture
def report(tmp_path: Path, connection: TestConnection) -> Path:
    """The hedging fixture as the report of this spec's connection's account."""
    path = tmp_path / "ReportHistory.html"
    path.write_bytes(report_of(HEDGING_HTML, connection.login, SERVER))
    return path


@pytest.fixture
async def pipeline(kafka_bootstrap: str, pool: asyncpg.Pool, topics: Topics) -> Any:
    async with running_pipeline(kafka_bootstrap, pool, topics) as running:
        yield running


async def imported(settings: CliSettings, connection: TestConnection, report: Path) -> None:
    err = io.StringIO()
    status = await import_report(
        settings,
        connection_id=connection.created.connection_id,
        path=report,
        clock_spec="new-york-close",
        margin_mode=None,
        out=io.StringIO(),
        err=err,
    )
    assert status == PARTLY_IMPORTED, err.getvalue()  # 5012, 5013 and 5015 left out


async def journal_state(pool: asyncpg.Pool, connection: TestConnection) -> dict[str, Any]:
    """Every row the account's deals made, whole: fills, cash, journal rows, the balance."""
    connection_id = connection.created.connection_id
    return {
        "fills": [
            dict(r)
            for r in await pool.fetch(
                "SELECT * FROM broker_fills WHERE connection_id = $1 ORDER BY fill_key",
                connection_id,
            )
        ],
        "cash": [
            dict(r)
            for r in await pool.fetch(
                "SELECT * FROM broker_cash_movements WHERE connection_id = $1"
                " ORDER BY movement_key",
                connection_id,
            )
        ],
        "journal": [
            dict(r)
            for r in await pool.fetch(
                "SELECT * FROM trading_journal WHERE connection_id = $1 ORDER BY mt5_trade_id",
                connection_id,
            )
        ],
        "balance": dict(
            await pool.fetchrow(
                "SELECT current_balance, equity, currency, balance_as_of FROM trading_accounts"
                " WHERE id = $1",
                connection.created.account_id,
            )
            or {}
        ),
    }


def keys(state: dict[str, Any], table: str, column: str) -> list[str]:
    return [row[column].rsplit(":", 1)[1] for row in state[table]]


async def test_a_report_imported_twice_is_the_journal_of_it_imported_once(
    settings: CliSettings,
    pool: asyncpg.Pool,
    connection: TestConnection,
    report: Path,
    pipeline: RunningPipeline,
) -> None:
    await imported(settings, connection, report)
    await pipeline.caught_up()
    once = await journal_state(pool, connection)
    assert keys(once, "fills", "fill_key") == sorted(
        ["5002", "5003", "5004", "5005", "5006", "5007", "5008", "5009", "5010", "5011", "5014"]
    )
    assert keys(once, "cash", "movement_key") == ["5001", "5016", "5017"]
    trades = {row["mt5_trade_id"].rsplit(":", 1)[1]: row for row in once["journal"]}
    assert (trades["7001"]["status"], trades["7001"]["volume"]) == ("closed", Decimal("0.30"))
    assert trades["7001"]["profit"] == Decimal("90.00")
    assert (trades["7005"]["status"], trades["7006"]["status"]) == ("closed", "closed")
    assert once["balance"]["current_balance"] == Decimal("10225.14")

    await imported(settings, connection, report)
    await pipeline.caught_up()
    assert await journal_state(pool, connection) == once


async def test_importing_what_the_expert_advisor_already_delivered_changes_nothing(
    settings: CliSettings,
    pool: asyncpg.Pool,
    connection: TestConnection,
    report: Path,
    pipeline: RunningPipeline,
    ingest_with: IngestStarter,
    sink: RecordingSink,
) -> None:
    # The EA's webhooks of the same deals, each with the server's offset at the time it sent
    # them (UTC+2 in January, UTC+3 in July and August).
    batches = [
        (list(ea_deals(report, "2024.01")), 7200),
        (list(ea_deals(report, "2024.07")) + list(ea_deals(report, "2024.08")), 10800),
    ]
    async with ingest_with() as ingest:
        for number, (deals, offset) in enumerate(batches):
            body = encode_body(
                {
                    "account": {
                        "login": connection.login,
                        "server": SERVER,
                        "currency": "USD",
                        "balance": Decimal("10225.14"),
                        "equity": Decimal("10185.44"),
                    },
                    "server_time_offset_seconds": offset,
                    "deals": deals,
                }
            )
            secret = connection.created.webhook_secret
            headers = signed_headers(secret, f"msg_ea_{number}", body)
            response = await ingest.client.post(
                connection.webhook_path, content=body, headers=headers
            )
            assert response.status_code == 202, response.text
    assert len(sink.published) == 2
    for event in sink.published:
        await pipeline.send_raw(event)
    await pipeline.caught_up()
    from_the_ea = await journal_state(pool, connection)
    assert len(from_the_ea["fills"]) == 14 and len(from_the_ea["cash"]) == 3
    assert from_the_ea["balance"]["equity"] == Decimal("10185.44")

    await imported(settings, connection, report)
    await pipeline.caught_up()
    assert await journal_state(pool, connection) == from_the_ea
