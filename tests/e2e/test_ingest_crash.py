"""Ingest killed (SIGKILL) between claiming a webhook id and publishing its event loses nothing:
the sender's retries of that very delivery are told 503 with Retry-After, never "already
accepted", until the restarted ingest takes the dead claim over and publishes the event exactly
as it was sent. The broker is real; ingest is stuck mid-publish by freezing the link to it."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest

from services.devstack.broker import EmbeddedBroker
from services.devstack.demo import encode_body, signed_headers
from services.shared.envelope import RawEvent, derive_event_id
from services.shared.kafka import TopicSpec, ensure_topics
from services.shared.vault import CredentialVault
from tests.support.builders import TestConnection, fixture_deals, mt5_body, new_connection
from tests.support.kafka import read_topic
from tests.support.service_process import ServiceProcess, ingest_process, wait_until_ready
from tests.support.tcp_proxy import TcpProxy

pytestmark = pytest.mark.e2e

# How long the restarted ingest leaves a claim to its publisher before taking it over: far
# longer than the test, so that only moving the claim's time back (as the lease passing would)
# lets a retry take it over, however slow the machine.
LEASE_SECONDS = 3600


@pytest.fixture
def link() -> Iterator[TcpProxy]:
    with TcpProxy() as link:
        yield link


@pytest.fixture
def broker(link: TcpProxy) -> Iterator[EmbeddedBroker]:
    """A broker of this test's own that every client reaches through the link, metadata and
    all (it advertises the link's port, not its own)."""
    with EmbeddedBroker(advertised_port=link.port) as broker:
        link.forward_to(broker.port)
        yield broker


async def wait_for_claim(
    pool: asyncpg.Pool, connection: TestConnection, webhook_id: str, within: float = 30.0
) -> None:
    deadline = time.monotonic() + within
    while not await pool.fetchval(
        "SELECT EXISTS (SELECT 1 FROM webhook_deliveries WHERE connection_id = $1"
        " AND webhook_id = $2 AND state = 'publishing')",
        connection.created.connection_id,
        webhook_id,
    ):
        assert time.monotonic() < deadline, "ingest never claimed the webhook id"
        await asyncio.sleep(0.02)


async def lease_passes(pool: asyncpg.Pool, connection: TestConnection, webhook_id: str) -> None:
    """What waiting out the claim's lease would do: its claim time moves back past it."""
    await pool.execute(
        "UPDATE webhook_deliveries SET claimed_at = claimed_at - make_interval(secs => $3)"
        " WHERE connection_id = $1 AND webhook_id = $2 AND state = 'publishing'",
        connection.created.connection_id,
        webhook_id,
        float(LEASE_SECONDS + 1),
    )


async def test_a_webhook_whose_ingest_died_mid_publish_is_published_by_the_senders_retry(
    pool: asyncpg.Pool,
    vault: CredentialVault,
    database_url: str,
    master_key: str,
    link: TcpProxy,
    broker: EmbeddedBroker,
    tmp_path: Path,
) -> None:
    topic = f"e2e.{uuid.uuid4().hex[:8]}.raw"
    await ensure_topics(link.address, [TopicSpec(topic, 1)])
    async with pool.acquire() as conn:
        connection = await new_connection(conn, vault)
    secret = connection.created.webhook_secret
    body = encode_body(mt5_body(connection.login, fixture_deals(), balance="1234.56"))
    headers = signed_headers(secret, "msg_killed", body)  # the very same on every retry
    warm_up = encode_body(mt5_body(connection.login, fixture_deals()[:1]))

    def ingest(name: str, **env: str) -> tuple[ServiceProcess, str]:
        directory = tmp_path / name
        directory.mkdir()
        return ingest_process(
            directory, database_url, link.address, master_key, POSCAL_TOPIC_RAW=topic, **env
        )

    doomed, doomed_url = ingest("killed")
    with doomed:
        wait_until_ready(doomed, doomed_url)
        async with httpx.AsyncClient(base_url=doomed_url, timeout=120) as client:
            first = await client.post(
                connection.webhook_path,
                content=warm_up,
                headers=signed_headers(secret, "msg_warm_up", warm_up),
            )
            assert first.status_code == 202  # the path to the broker works
            link.freeze()
            stuck = asyncio.create_task(
                client.post(connection.webhook_path, content=body, headers=headers)
            )
            await wait_for_claim(pool, connection, "msg_killed")
            doomed.kill()
            with pytest.raises(httpx.TransportError):
                await stuck  # the sender got no answer: it will retry
    link.cut()  # what the killed ingest had sent towards the broker is gone with it

    restarted, restarted_url = ingest(
        "restarted",
        POSCAL_PUBLISH_TIMEOUT_SECONDS="2",
        POSCAL_CLAIM_LEASE_SECONDS=str(LEASE_SECONDS),
    )
    with restarted:
        wait_until_ready(restarted, restarted_url)
        async with httpx.AsyncClient(base_url=restarted_url, timeout=30) as client:
            # The dead publisher's claim is still leased: retries are told to wait, never 409.
            leased = [
                await client.post(connection.webhook_path, content=body, headers=headers)
                for _ in range(2)
            ]
            await lease_passes(pool, connection, "msg_killed")
            taken_over = await client.post(connection.webhook_path, content=body, headers=headers)
            afterwards = await client.post(connection.webhook_path, content=body, headers=headers)

    assert [a.status_code for a in leased] == [503, 503]
    assert {a.json()["error"] for a in leased} == {"unavailable"}
    assert all(1 <= int(a.headers["retry-after"]) <= LEASE_SECONDS for a in leased)
    event_id = derive_event_id(connection.created.connection_id, "msg_killed")
    assert taken_over.status_code == 202
    assert taken_over.json() == {"status": "accepted", "event_id": str(event_id)}
    assert afterwards.status_code == 409  # now it is accepted, and only now

    records = await read_topic(link.address, topic, expect=2)  # the warm-up, then this one
    published = [RawEvent.model_validate_json(r.value) for r in records]
    killed = [e for e in published if e.delivery_id == "msg_killed"]
    assert [(e.event_id, e.body) for e in killed] == [(event_id, body)]
