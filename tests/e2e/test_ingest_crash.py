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
from tests.support.frozen_link import FrozenLink
from tests.support.ingest_process import IngestProcess
from tests.support.kafka import read_topic

pytestmark = pytest.mark.e2e

# How long the restarted ingest leaves a claim to its publisher before taking it over: longer
# than a restart, so its first answer to the retry is the 503 of a claim still leased.
LEASE_SECONDS = 8


@pytest.fixture
def link() -> Iterator[FrozenLink]:
    with FrozenLink() as link:
        yield link


@pytest.fixture
def broker(link: FrozenLink) -> Iterator[EmbeddedBroker]:
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


async def retry_until_decided(
    client: httpx.AsyncClient,
    path: str,
    body: bytes,
    headers: dict[str, str],
    within: float = 4 * LEASE_SECONDS,
) -> list[httpx.Response]:
    """The same delivery sent again and again as a sender should: after each Retry-After,
    until an answer says it is decided (anything but 429 and 503)."""
    answers: list[httpx.Response] = []
    deadline = time.monotonic() + within
    while True:
        answer = await client.post(path, content=body, headers=headers)
        answers.append(answer)
        if answer.status_code not in (429, 503):
            return answers
        assert time.monotonic() < deadline, [a.status_code for a in answers]
        await asyncio.sleep(int(answer.headers["retry-after"]))


async def test_a_webhook_whose_ingest_died_mid_publish_is_published_by_the_senders_retry(
    pool: asyncpg.Pool,
    vault: CredentialVault,
    database_url: str,
    master_key: str,
    link: FrozenLink,
    broker: EmbeddedBroker,
    tmp_path: Path,
) -> None:
    topic = f"e2e.{uuid.uuid4().hex[:8]}.raw"
    await ensure_topics(link.address, [TopicSpec(topic, 1)])
    async with pool.acquire() as conn:
        connection = await new_connection(conn, vault)
    env = {
        "DATABASE_URL": database_url,
        "KAFKA_BOOTSTRAP_SERVERS": link.address,
        "POSCAL_MASTER_KEY": master_key,
        "POSCAL_TOPIC_RAW": topic,
        "POSCAL_LOG_FORMAT": "json",
    }
    secret = connection.created.webhook_secret
    body = encode_body(mt5_body(connection.login, fixture_deals(), balance="1234.56"))
    headers = signed_headers(secret, "msg_killed", body)  # the very same on every retry
    warm_up = encode_body(mt5_body(connection.login, fixture_deals()[:1]))

    with IngestProcess(env, tmp_path / "ingest-killed.log") as doomed:
        async with httpx.AsyncClient(base_url=doomed.url, timeout=120) as client:
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

    restarted_env = env | {
        "POSCAL_PUBLISH_TIMEOUT_SECONDS": "2",
        "POSCAL_CLAIM_LEASE_SECONDS": str(LEASE_SECONDS),
    }
    with IngestProcess(restarted_env, tmp_path / "ingest-restarted.log") as restarted:
        async with httpx.AsyncClient(base_url=restarted.url, timeout=30) as client:
            answers = await retry_until_decided(client, connection.webhook_path, body, headers)
            afterwards = await client.post(connection.webhook_path, content=body, headers=headers)

    statuses = [a.status_code for a in answers]
    assert statuses[0] == 503 and statuses[-1] == 202, statuses
    assert set(statuses[:-1]) == {503}, statuses  # never 409 before the event was published
    assert all(1 <= int(a.headers["retry-after"]) <= LEASE_SECONDS for a in answers[:-1])
    event_id = derive_event_id(connection.created.connection_id, "msg_killed")
    assert answers[-1].json() == {"status": "accepted", "event_id": str(event_id)}
    assert afterwards.status_code == 409  # now it is accepted, and only now

    records = await read_topic(link.address, topic, expect=2)  # the warm-up, then this one
    published = [RawEvent.model_validate_json(r.value) for r in records]
    killed = [e for e in published if e.delivery_id == "msg_killed"]
    assert [(e.event_id, e.body) for e in killed] == [(event_id, body)]
