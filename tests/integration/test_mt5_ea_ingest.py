"""Requests built and signed by the Expert Advisor's own code (its .mqh source compiled with
g++), sent to the real ingest on the session's Postgres and broker: accepted and published
byte for byte; the same deals resent are the same webhook id, which ingest answers 409 and the
EA counts as delivered."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import httpx
import pytest

from services.shared.envelope import RawEvent
from services.shared.kafka import create_producer
from services.shared.publishing import RawEventPublisher
from services.shared.settings import Topics
from services.shared.vault import CredentialVault
from tests.support.builders import SERVER, TestConnection, fixture_deals, new_connection
from tests.support.ingest import IngestStarter
from tests.support.kafka import read_topic
from tests.support.mt5_ea import EaHarness, EaRequest, ea_harness

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def ea(tmp_path_factory: pytest.TempPathFactory) -> EaHarness:
    return ea_harness(Path(tmp_path_factory.getbasetemp()))


@dataclass
class Ingest:
    client: httpx.AsyncClient
    connection: TestConnection
    ea: EaHarness

    def requests(self, deals: list[dict[str, Any]], **options: Any) -> list[EaRequest]:
        values: dict[str, Any] = {
            "secret": self.connection.created.webhook_secret,
            "timestamp": int(time.time()),
            "login": self.connection.login,
            "server": SERVER,
        }
        return self.ea.requests(deals=deals, **(values | options))

    async def send(self, request: EaRequest) -> httpx.Response:
        return await self.client.post(
            urlsplit(self.connection.created.webhook_url).path,
            content=request.body,
            headers=request.headers,
        )


@pytest.fixture
async def ingest(
    ingest_with: IngestStarter,
    connection: TestConnection,
    topics: Topics,
    kafka_bootstrap: str,
    ea: EaHarness,
) -> AsyncIterator[Ingest]:
    producer = create_producer(kafka_bootstrap, "test-ea-ingest")
    await producer.start()
    try:
        sink = RawEventPublisher(producer, topics.raw, timeout_seconds=5)
        async with ingest_with(sink=sink, kafka_bootstrap_servers=kafka_bootstrap) as running:
            yield Ingest(running.client, connection, ea)
    finally:
        await producer.stop()


async def test_a_webhook_signed_by_the_ea_is_accepted_and_published_exactly_as_built(
    ingest: Ingest, topics: Topics, kafka_bootstrap: str
) -> None:
    [request] = ingest.requests(fixture_deals())
    response = await ingest.send(request)
    assert response.status_code == 202, response.text
    [record] = await read_topic(kafka_bootstrap, topics.raw, expect=1)
    event = RawEvent.model_validate_json(record.value)
    assert event.body == request.body
    assert event.delivery_id == request.webhook_id
    assert event.connection.connection_id == ingest.connection.created.connection_id


async def test_the_same_deals_resent_by_the_ea_are_the_same_id_which_ingest_answers_409(
    ingest: Ingest, ea: EaHarness, topics: Topics, kafka_bootstrap: str
) -> None:
    [first] = ingest.requests(fixture_deals())
    assert (await ingest.send(first)).status_code == 202
    # Resent later (the EA restarted before it saw the answer): signed anew, balance moved on.
    [again] = ingest.requests(fixture_deals(), timestamp=int(time.time()) + 1, balance=2000.0)
    assert again.webhook_id == first.webhook_id
    response = await ingest.send(again)
    assert response.status_code == 409, response.text
    assert ea.line("classify", str(response.status_code)) == "delivered"
    # A new deal after it goes through, and is the only other record published.
    [later] = ingest.requests([fixture_deals()[2] | {"ticket": 900400, "order": 800400}])
    assert (await ingest.send(later)).status_code == 202
    records = await read_topic(kafka_bootstrap, topics.raw, expect=2)
    bodies = [RawEvent.model_validate_json(r.value).body for r in records]
    assert bodies == [first.body, later.body]


async def test_a_history_backfill_in_batches_is_accepted_once_and_replayed_as_409s(
    ingest: Ingest, topics: Topics, kafka_bootstrap: str
) -> None:
    first = fixture_deals()[0]
    history = [first | {"ticket": 2_000_000 + i, "position_id": 3_000_000 + i} for i in range(25)]
    batches = ingest.requests(history, batch_size=10)
    assert len(batches) == 3
    assert [(await ingest.send(b)).status_code for b in batches] == [202, 202, 202]
    replayed = ingest.requests(history, batch_size=10, timestamp=int(time.time()) + 2)
    assert [(await ingest.send(b)).status_code for b in replayed] == [409, 409, 409]
    records = await read_topic(kafka_bootstrap, topics.raw, expect=3)
    assert [RawEvent.model_validate_json(r.value).body for r in records] == [
        b.body for b in batches
    ]


async def test_a_webhook_signed_with_another_connections_secret_is_401_which_pauses_the_ea(
    ingest: Ingest, ea: EaHarness, pool: asyncpg.Pool, vault: CredentialVault
) -> None:
    async with pool.acquire() as conn:
        other = await new_connection(conn, vault)
    [request] = ingest.requests(fixture_deals(), secret=other.created.webhook_secret)
    response = await ingest.send(request)
    assert response.status_code == 401
    assert ea.line("classify", "401") == "paused"


async def _set_lifecycle(pool: asyncpg.Pool, connection: TestConnection, lifecycle: str) -> None:
    await pool.execute(
        "UPDATE mt5_connections SET lifecycle = $2 WHERE id = $1",
        connection.created.connection_id,
        lifecycle,
    )


async def test_a_paused_connection_s_webhooks_wait_with_the_ea_and_arrive_once_resumed(
    ingest: Ingest, ea: EaHarness, pool: asyncpg.Pool, topics: Topics, kafka_bootstrap: str
) -> None:
    """Paused, a verified delivery is 423 with Retry-After, which the EA classifies as a retry
    (the batch stays in its outbox); resumed, the same batch is accepted and published."""
    await _set_lifecycle(pool, ingest.connection, "paused")
    [held] = ingest.requests(fixture_deals())
    paused = await ingest.send(held)
    assert paused.status_code == 423, paused.text
    assert paused.json()["error"] == "locked"  # the code of every 423: Retry-After tells
    assert "paused" in paused.json()["detail"]
    retry_after = paused.headers["retry-after"]
    assert int(retry_after) >= 1
    assert ea.line("classify", "423", retry_after) == "retry"
    await _set_lifecycle(pool, ingest.connection, "active")
    [again] = ingest.requests(fixture_deals(), timestamp=int(time.time()) + 1)
    assert again.webhook_id == held.webhook_id  # the same batch, signed anew
    accepted = await ingest.send(again)
    assert accepted.status_code == 202, accepted.text
    [record] = await read_topic(kafka_bootstrap, topics.raw, expect=1)
    assert RawEvent.model_validate_json(record.value).delivery_id == held.webhook_id


async def test_only_a_sender_who_can_sign_learns_that_a_connection_is_paused(
    ingest: Ingest, pool: asyncpg.Pool, vault: CredentialVault
) -> None:
    await _set_lifecycle(pool, ingest.connection, "paused")
    async with pool.acquire() as conn:
        other = await new_connection(conn, vault)
    [forged] = ingest.requests(fixture_deals(), secret=other.created.webhook_secret)
    refused = await ingest.send(forged)
    assert refused.status_code == 401
    assert "retry-after" not in refused.headers
    [unsigned] = ingest.requests(fixture_deals())
    response = await ingest.client.post(
        urlsplit(ingest.connection.created.webhook_url).path,
        content=unsigned.body,
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 401


async def test_a_locked_connection_s_423_has_no_retry_after_so_the_ea_stops_sending(
    ingest: Ingest, ea: EaHarness, pool: asyncpg.Pool
) -> None:
    await _set_lifecycle(pool, ingest.connection, "locked")
    [request] = ingest.requests(fixture_deals())
    locked = await ingest.send(request)
    assert locked.status_code == 423
    assert locked.json()["error"] == "locked"
    assert "retry-after" not in locked.headers
    assert ea.line("classify", "423") == "paused"
