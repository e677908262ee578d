"""The webhook endpoint against the real database and broker: what is accepted is published
exactly as received; anything unverifiable is refused with 401 and publishes nothing."""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import asyncpg
import httpx
import pytest
from aiokafka import AIOKafkaProducer
from structlog.testing import capture_logs

from services.devstack.demo import encode_body, signed_headers
from services.devstack.ports import free_port
from services.shared.crypto import LocalKeyEncryptionKey, new_master_key_base64
from services.shared.database import create_pool
from services.shared.envelope import RawEvent
from services.shared.errors import TransientError
from services.shared.kafka import create_producer
from services.shared.publishing import RawEventPublisher
from services.shared.settings import Topics
from services.shared.vault import CredentialVault
from tests.support.builders import TestConnection, fixture_deals, mt5_body
from tests.support.ingest import IngestStarter, RunningIngest
from tests.support.kafka import read_topic

pytestmark = pytest.mark.integration


@dataclass
class Ingest:
    client: httpx.AsyncClient
    connection: TestConnection
    topics: Topics

    @property
    def url(self) -> str:
        return self.connection.webhook_path

    def body(self) -> bytes:
        return encode_body(mt5_body(self.connection.login, fixture_deals()))

    async def post(
        self, body: bytes, headers: dict[str, str], url: str | None = None
    ) -> httpx.Response:
        return await self.client.post(url or self.url, content=body, headers=headers)


class RefusingSink:
    async def publish(self, event: RawEvent) -> None:
        raise TransientError("broker unreachable")


@pytest.fixture
async def producer(kafka_bootstrap: str) -> AsyncIterator[AIOKafkaProducer]:
    producer = create_producer(kafka_bootstrap, "test-ingest")
    await producer.start()
    yield producer
    await producer.stop()


@pytest.fixture
def ingest_with(
    ingest_with: IngestStarter, producer: AIOKafkaProducer, topics: Topics, kafka_bootstrap: str
) -> IngestStarter:
    """Every ingest app here publishes to the test's raw topic on the real broker."""
    return ingest_with.defaulting(
        sink=RawEventPublisher(producer, topics.raw, timeout_seconds=5),
        kafka_bootstrap_servers=kafka_bootstrap,
        max_body_bytes=4096,
        # These specs send many failures from one address: throttling it has specs of its own
        # (test_ingest_sources.py).
        failures_before_throttle=1000,
    )


@pytest.fixture
async def ingest(
    ingest_with: IngestStarter, connection: TestConnection, topics: Topics
) -> AsyncIterator[Ingest]:
    async with ingest_with() as running:
        yield Ingest(running.client, connection, topics)


async def test_signed_webhook_is_published_exactly_as_received(
    ingest: Ingest, kafka_bootstrap: str
) -> None:
    body = ingest.body()
    response = await ingest.post(
        body, signed_headers(ingest.connection.created.webhook_secret, "msg_1", body)
    )
    assert response.status_code == 202
    [record] = await read_topic(kafka_bootstrap, ingest.topics.raw, expect=1)
    event = RawEvent.model_validate_json(record.value)
    assert event.body == body
    assert record.key == str(ingest.connection.created.connection_id).encode()
    assert str(event.event_id) == response.json()["event_id"]
    assert event.delivery_id == "msg_1"
    assert any(name == "traceparent" for name, _ in record.headers)


async def test_a_webhook_id_already_accepted_gets_409_and_publishes_nothing_more(
    ingest: Ingest, kafka_bootstrap: str
) -> None:
    body = ingest.body()
    secret = ingest.connection.created.webhook_secret
    first = await ingest.post(body, signed_headers(secret, "msg_same", body))
    again = await ingest.post(body, signed_headers(secret, "msg_same", body))
    assert (first.status_code, again.status_code) == (202, 409)
    assert again.json() == {
        "error": "replay",
        "detail": "this webhook-id is already accepted for this connection: do not resend it",
    }
    assert len(await read_topic(kafka_bootstrap, ingest.topics.raw, expect=1)) == 1


async def test_bad_signature_gets_401_and_publishes_nothing(
    ingest: Ingest, kafka_bootstrap: str
) -> None:
    body = ingest.body()
    headers = signed_headers(ingest.connection.created.webhook_secret, "msg_2", body)
    tampered = body.replace(b"0.30", b"3.00")
    response = await ingest.post(tampered, headers)
    assert response.status_code == 401
    assert response.json() == {
        "error": "unauthorized",
        "detail": "the webhook could not be verified for this connection",
    }
    assert await read_topic(kafka_bootstrap, ingest.topics.raw, expect=0, wait_seconds=1) == []


async def test_unknown_connection_is_indistinguishable_from_a_bad_signature(
    ingest: Ingest,
) -> None:
    body = ingest.body()
    headers = signed_headers(ingest.connection.created.webhook_secret, "msg_3", body)
    unknown = await ingest.post(body, headers, url=f"/v1/webhooks/mt5/{uuid.uuid4()}")
    not_a_uuid = await ingest.post(body, headers, url="/v1/webhooks/mt5/not-a-uuid")
    wrong_broker = await ingest.post(body, headers, url=ingest.url.replace("/mt5/", "/oanda/"))
    bad_signature = await ingest.post(body + b" ", headers)
    for response in (unknown, not_a_uuid, wrong_broker):
        assert response.status_code == bad_signature.status_code == 401
        assert response.json() == bad_signature.json()


MALFORMED_HEADERS = [
    ("webhook-id", ""),
    ("webhook-timestamp", "yesterday"),
    ("webhook-timestamp", "1e9"),
    ("webhook-signature", "garbage"),
    ("webhook-signature", "v1,not-base64!!"),
    ("webhook-signature", "v2,c2lnbmF0dXJl"),
    ("webhook-signature", ""),
]


@pytest.mark.parametrize(("header", "value"), MALFORMED_HEADERS)
async def test_malformed_headers_get_401_never_500(ingest: Ingest, header: str, value: str) -> None:
    body = ingest.body()
    headers = signed_headers(ingest.connection.created.webhook_secret, "msg_4", body)
    headers[header] = value
    assert (await ingest.post(body, headers)).status_code == 401


@pytest.mark.parametrize("skew_seconds", [-301, 301, -86_400, 10**12])
async def test_a_correctly_signed_webhook_outside_five_minutes_gets_401(
    ingest: Ingest, skew_seconds: int
) -> None:
    # Signed over its own (stale or future) timestamp: only the tolerance can refuse it.
    body = ingest.body()
    secret = ingest.connection.created.webhook_secret
    headers = signed_headers(secret, "msg_5", body, now=time.time() + skew_seconds)
    response = await ingest.post(body, headers)
    assert (response.status_code, response.json()["error"]) == (401, "unauthorized")


async def test_a_correctly_signed_webhook_just_inside_five_minutes_is_accepted(
    ingest: Ingest,
) -> None:
    body = ingest.body()
    secret = ingest.connection.created.webhook_secret
    for skew_seconds in (-290, 290):
        headers = signed_headers(secret, f"msg_6{skew_seconds}", body, time.time() + skew_seconds)
        assert (await ingest.post(body, headers)).status_code == 202


async def test_no_refused_request_publishes_anything(ingest: Ingest, kafka_bootstrap: str) -> None:
    body = ingest.body()
    secret = ingest.connection.created.webhook_secret
    for header, value in MALFORMED_HEADERS:
        headers = signed_headers(secret, "msg_7", body) | {header: value}
        assert (await ingest.post(body, headers)).status_code == 401
    stale = signed_headers(secret, "msg_8", body, now=time.time() - 301)
    assert (await ingest.post(body, stale)).status_code == 401
    assert await read_topic(kafka_bootstrap, ingest.topics.raw, expect=0, wait_seconds=1) == []


async def test_oversized_body_gets_413_and_publishes_nothing(
    ingest: Ingest, kafka_bootstrap: str
) -> None:
    body = b"{" + b" " * 5000 + b"}"
    headers = signed_headers(ingest.connection.created.webhook_secret, "msg_5", body)
    response = await ingest.post(body, headers)
    assert response.status_code == 413
    assert await read_topic(kafka_bootstrap, ingest.topics.raw, expect=0, wait_seconds=1) == []


async def test_an_event_the_broker_did_not_acknowledge_gets_503_with_retry_after(
    ingest_with: IngestStarter, connection: TestConnection
) -> None:
    response = await _deliver_signed(ingest_with(sink=RefusingSink()), connection)
    assert response.status_code == 503
    assert response.headers["retry-after"] == "5"


async def _deliver_signed(
    app: contextlib.AbstractAsyncContextManager[RunningIngest],
    connection: TestConnection,
    url: str | None = None,
) -> httpx.Response:
    """One correctly signed delivery for `connection`, to that app."""
    body = encode_body(mt5_body(connection.login, fixture_deals()))
    async with app as ingest:
        return await ingest.client.post(
            url or connection.webhook_path,
            content=body,
            headers=signed_headers(connection.created.webhook_secret, "msg_7", body),
        )


async def test_a_secret_that_does_not_decrypt_gets_the_401_of_an_unknown_connection(
    ingest_with: IngestStarter, topics: Topics, connection: TestConnection, kafka_bootstrap: str
) -> None:
    # Started with another master key than the one the secret was sealed under.
    wrong_key = CredentialVault(LocalKeyEncryptionKey.from_base64(new_master_key_base64()))
    with capture_logs() as logs:
        undecryptable = await _deliver_signed(ingest_with(vault=wrong_key), connection)
    unknown = await _deliver_signed(
        ingest_with(vault=wrong_key), connection, url=f"/v1/webhooks/mt5/{uuid.uuid4()}"
    )
    assert undecryptable.status_code == unknown.status_code == 401
    assert undecryptable.json() == unknown.json()
    assert await read_topic(kafka_bootstrap, topics.raw, expect=0, wait_seconds=1) == []
    [error] = [entry for entry in logs if entry["log_level"] == "error"]
    assert error["connection_id"] == str(connection.created.connection_id)
    secret = connection.created.webhook_secret
    assert secret not in repr(logs) and secret.split("_")[-1] not in repr(logs)


@contextlib.asynccontextmanager
async def _refusing_connections(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    """Postgres is down: nothing listens where the pool connects."""
    pool = await create_pool(f"postgresql://poscal@127.0.0.1:{free_port()}/poscal", min_size=0)
    try:
        yield pool
    finally:
        await pool.close()


@contextlib.asynccontextmanager
async def _closed(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    """The pool was closed under the app (shutdown racing a request)."""
    pool = await create_pool(database_url, min_size=0, max_size=1)
    await pool.close()
    yield pool


@contextlib.asynccontextmanager
async def _exhausted(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    """Every pooled connection is busy for longer than a lookup may wait."""
    pool = await create_pool(database_url, min_size=1, max_size=1)
    try:
        async with pool.acquire():
            yield pool
    finally:
        await pool.close()


@pytest.mark.parametrize("outage", [_refusing_connections, _closed, _exhausted])
async def test_a_database_outage_gets_503_with_retry_after_and_publishes_nothing(
    outage: Callable[[str], contextlib.AbstractAsyncContextManager[asyncpg.Pool]],
    ingest_with: IngestStarter,
    topics: Topics,
    connection: TestConnection,
    database_url: str,
    kafka_bootstrap: str,
) -> None:
    async with outage(database_url) as unavailable:
        response = await _deliver_signed(ingest_with(pool=unavailable), connection)
    assert response.status_code == 503
    assert response.headers["retry-after"] == "5"
    assert response.json() == {
        "error": "unavailable",
        "detail": "the event could not be stored; retry later",
    }
    assert await read_topic(kafka_bootstrap, topics.raw, expect=0, wait_seconds=1) == []
