"""End to end through the real service processes: a signed MT5 webhook becomes a journal row;
the same deals sent again change nothing; a bad signature is refused and publishes nothing; one
trace follows the webhook through ingest, normalizer and writer."""

from __future__ import annotations

import asyncio
import json
import time
from decimal import Decimal

import asyncpg
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from services.cli.traces import SpanRecord, read_trace_dir
from services.devstack.demo import encode_body, send_signed, signed_headers, wait_for_events
from services.devstack.stack import DevStack
from services.shared.vault import CredentialVault
from tests.support.builders import TestConnection, fixture_deals, mt5_body, new_connection
from tests.support.kafka import read_topic
from tests.support.otlp import OtlpReceiver

pytestmark = pytest.mark.e2e


@pytest.fixture
async def connection(pool: asyncpg.Pool, vault: CredentialVault, stack: DevStack) -> TestConnection:
    async with pool.acquire() as conn:
        return await new_connection(conn, vault, ingest_url=stack.ingest_url)


async def _send(
    connection: TestConnection, body: bytes, webhook_id: str | None = None
) -> httpx.Response:
    async with httpx.AsyncClient(timeout=10) as client:
        return await send_signed(client, connection.created, body, webhook_id)


async def _journal_state(
    pool: asyncpg.Pool, connection: TestConnection
) -> list[tuple[object, ...]]:
    rows = await pool.fetch(
        "SELECT mt5_trade_id, side, volume, closed_volume, entry_price, exit_price, opened_at,"
        " closed_at, profit, commission, swap, status, fill_count FROM trading_journal"
        " WHERE connection_id = $1 ORDER BY mt5_trade_id",
        connection.created.connection_id,
    )
    balance = await pool.fetchval(
        "SELECT current_balance FROM trading_accounts WHERE id = $1", connection.created.account_id
    )
    return [tuple(r) for r in rows] + [("balance", balance)]


async def test_a_signed_webhook_becomes_a_journal_row(
    pool: asyncpg.Pool, connection: TestConnection
) -> None:
    body = encode_body(mt5_body(connection.login, fixture_deals(), balance="1069.44"))
    response = await _send(connection, body)
    assert response.status_code == 202
    async with pool.acquire() as conn:
        assert await wait_for_events(conn, connection.created.connection_id, 1) == 1
    row = await pool.fetchrow(
        "SELECT * FROM trading_journal WHERE connection_id = $1", connection.created.connection_id
    )
    assert row is not None
    assert row["mt5_trade_id"] == f"mt5:PosCal-Test:{connection.login}:800001"
    assert (row["side"], row["status"], row["volume"]) == ("buy", "closed", Decimal("0.30"))
    assert (row["entry_price"], row["exit_price"]) == (Decimal("1.085"), Decimal("1.0875"))
    assert (row["profit"], row["commission"], row["swap"]) == (
        Decimal("75.00"),
        Decimal("-4.20"),
        Decimal("-1.36"),
    )
    assert row["opened_at"].isoformat() == "2024-06-03T06:00:00.123000+00:00"
    assert row["closed_at"].isoformat() == "2024-06-04T09:00:00.789000+00:00"
    assert row["user_id"] == connection.user_id and row["connection_type"] == "demo"


async def test_the_same_deals_resent_under_new_webhook_ids_change_nothing(
    pool: asyncpg.Pool, connection: TestConnection
) -> None:
    deals = fixture_deals()
    bodies = [encode_body(mt5_body(connection.login, [d], balance="1000.00")) for d in deals]
    for body in bodies:
        assert (await _send(connection, body)).status_code == 202
    async with pool.acquire() as conn:
        await wait_for_events(conn, connection.created.connection_id, 3)
    before = await _journal_state(pool, connection)
    # Re-sent in another order, under new ids, plus one delivery replayed (refused: 409).
    for body in [bodies[2], bodies[0], bodies[1]]:
        assert (await _send(connection, body)).status_code == 202
    assert (await _send(connection, bodies[0], webhook_id="msg_retried")).status_code == 202
    assert (await _send(connection, bodies[0], webhook_id="msg_retried")).status_code == 409
    async with pool.acquire() as conn:
        assert await wait_for_events(conn, connection.created.connection_id, 7) == 7
    assert await _journal_state(pool, connection) == before
    assert before[0][11] == "closed"


async def test_a_bad_signature_gets_401_and_publishes_nothing(
    connection: TestConnection, stack: DevStack, kafka_bootstrap: str
) -> None:
    body = encode_body(mt5_body(connection.login, fixture_deals()))
    headers = signed_headers(connection.created.webhook_secret, "msg_forged", body)
    headers["webhook-signature"] = "v1," + "A" * 44
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.post(connection.created.webhook_url, content=body, headers=headers)
    assert response.status_code == 401
    # Ingest publishes before it answers 202, and never after answering: the answer is the signal.
    key = str(connection.created.connection_id).encode()
    assert [r for r in await read_topic(kafka_bootstrap, stack.topics.raw) if r.key == key] == []


async def test_one_trace_follows_a_webhook_through_all_three_services(
    pool: asyncpg.Pool, connection: TestConnection, stack: DevStack, otlp: OtlpReceiver
) -> None:
    body = encode_body(mt5_body(connection.login, fixture_deals()))
    response = await _send(connection, body)
    event_id = response.json()["event_id"]
    async with pool.acquire() as conn:
        await wait_for_events(conn, connection.created.connection_id, 1)
    deadline = time.monotonic() + 30
    services: set[str] = set()
    in_trace: list[SpanRecord] = []
    while time.monotonic() < deadline and len(services) < 3:
        await asyncio.sleep(0.2)  # spans are exported in batches, every half second
        spans = read_trace_dir(stack.traces)
        servers = [
            s
            for s in spans
            if s.attributes.get("poscal.event_id") == event_id and s.kind == "SERVER"
        ]
        if not servers:
            continue
        in_trace = [s for s in spans if s.trace_id == servers[0].trace_id]
        services = {s.service for s in in_trace}
    assert services == {"poscal-ingest", "poscal-normalizer", "poscal-writer"}
    names = {s.name for s in in_trace}
    assert {
        f"send {stack.topics.raw}",
        f"process {stack.topics.raw}",
        f"send {stack.topics.canonical}",
        f"process {stack.topics.canonical}",
    } <= names
    # The same trace went out over OTLP too, from every service, to the configured endpoint.
    deadline = time.monotonic() + 30
    exported: set[str] = set()
    while time.monotonic() < deadline and len(exported) < 3:
        await asyncio.sleep(0.2)
        exported = {
            service for service, trace_id, _ in otlp.spans if trace_id == in_trace[0].trace_id
        }
    assert exported == {"poscal-ingest", "poscal-normalizer", "poscal-writer"}


def _scrape(url: str) -> dict[str, float]:
    """A service's /metrics as `name{labels}` -> value, parsed as Prometheus would."""
    text = httpx.get(url, timeout=10).text
    return {
        sample.name + json.dumps(sample.labels, sort_keys=True): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def _total(scraped: dict[str, float], name: str, **labels: str) -> float:
    wanted = [f'"{k}": "{v}"' for k, v in labels.items()]
    return sum(
        value
        for key, value in scraped.items()
        if key.startswith(name + "{") and all(w in key for w in wanted)
    )


async def test_each_service_serves_its_metrics_on_a_port_of_its_own(
    pool: asyncpg.Pool, connection: TestConnection, stack: DevStack
) -> None:
    written_before = _total(
        _scrape(stack.metrics_url("writer")), "poscal_writer_fills_written_total"
    )
    body = encode_body(mt5_body(connection.login, fixture_deals(), balance="1000.00"))
    assert (await _send(connection, body)).status_code == 202
    async with pool.acquire() as conn:
        await wait_for_events(conn, connection.created.connection_id, 1)
    async with httpx.AsyncClient(base_url=stack.api_url, timeout=10) as client:
        assert (await client.get("/v1/me")).status_code == 401
    writer = _scrape(stack.metrics_url("writer"))
    assert _total(writer, "poscal_writer_fills_written_total", broker="mt5") > written_before
    assert _total(writer, "poscal_consumer_commits_total") >= 1
    assert any(key.startswith("poscal_consumer_lag_records{") for key in writer)
    normalizer = _scrape(stack.metrics_url("normalizer"))
    assert _total(normalizer, "poscal_consumer_records_committed_total") >= 1
    api = _scrape(stack.metrics_url("api"))
    assert _total(api, "poscal_api_request_duration_seconds_count", route="/v1/me") >= 1
    ingest = _scrape(stack.metrics_url("ingest"))
    assert _total(ingest, "poscal_ingest_webhooks_total") >= 1

    async def gauges_read() -> bool:
        poller = _scrape(stack.metrics_url("poller"))
        return _total(poller, "poscal_poller_gauges_read_timestamp_seconds") > 0

    deadline = time.monotonic() + 30
    while not await gauges_read():
        assert time.monotonic() < deadline, "the poller's gauges not read within 30 s"
        await asyncio.sleep(0.1)
    ports = {stack.metrics_url(name) for name in ("poller", "normalizer", "writer", "api")}
    assert len(ports) == 4
