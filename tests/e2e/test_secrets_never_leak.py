"""Secrets never leak. With webhook secrets, broker credentials, a user's data key and the master
key planted, the whole pipeline runs through the real services (accepted webhooks, refusals,
dead letters, senders that put their own secrets in headers, a broker that refuses the poller's
token and echoes it back, the app API asked with a good token and a forged one), and none of
those secrets appears in any log line, span, OTLP export, Kafka record, HTTP response or
database column but the ciphertext that holds them.

The search itself is specified first: a leak check that finds nothing proves nothing unless it
is known to find a secret wherever and however it is written.
"""

from __future__ import annotations

import asyncio
import base64
import secrets
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import httpx
import orjson
import pytest
from aiokafka import AIOKafkaProducer

from services.api.tokens import mint_token
from services.cli.traces import read_trace_dir
from services.devstack.demo import encode_body, signed_headers, wait_for_events
from services.devstack.stack import SERVICES, DevStack
from services.shared.connection_admin.connections import NewConnection
from services.shared.credential_kinds import BROKER_CREDENTIALS
from services.shared.crypto import LocalKeyEncryptionKey, data_key_aad, generate_key, seal
from services.shared.database import Connection
from services.shared.dead_letters import DeadLetter
from services.shared.envelope import RawEvent
from services.shared.kafka import TopicSpec, ensure_topics
from services.shared.signatures import decode_secret, encode_secret, sign
from services.shared.vault import CredentialVault
from tests.support.builders import (
    PINNED_CONNECTION,
    SERVER,
    TestConnection,
    connect_broker_account,
    fixture_deals,
    mt5_body,
    new_connection,
)
from tests.support.echoing_broker import EchoingBroker
from tests.support.kafka import read_topic
from tests.support.leaks import LeakSearch, Secret
from tests.support.otlp_recording import RecordingOtlpReceiver

pytestmark = pytest.mark.e2e

# Where secrets are meant to be: sealed, and the data keys that open them, wrapped.
CIPHERTEXT_COLUMNS = {
    "public.mt5_credentials": {"ciphertext"},
    "public.user_data_keys": {"wrapped_key"},
}


@pytest.fixture(scope="module")
def otlp() -> Iterator[RecordingOtlpReceiver]:
    """The e2e stack's receiver, keeping whole export requests so their attributes are searched."""
    receiver = RecordingOtlpReceiver()
    with receiver:
        yield receiver


# --- The search finds a secret wherever and however it is written -----------------------------

KEY = bytes(range(7, 39))  # 32 bytes, as a webhook key or the master key
WEBHOOK_SECRET = Secret.webhook_secret("webhook secret", encode_secret(KEY))
TOKEN = Secret.text("broker token", "oanda-token-5f0c2a9e1d7b4c3a")


def nested_in_a_dead_letter(body: bytes) -> bytes:
    """A webhook body as the dead-letter topic carries it: base64 in a raw event, whose JSON is
    base64 in the letter."""
    event = RawEvent.wrap(
        source="webhook",
        connection=PINNED_CONNECTION,
        received_at=datetime(2024, 6, 3, tzinfo=UTC),
        delivery_id="msg_1",
        body=body,
    )
    return orjson.dumps({"reason": "malformed_json", "value_b64": _b64(event.model_dump_json())})


def _b64(text: str | bytes) -> str:
    return base64.b64encode(text.encode() if isinstance(text, str) else text).decode()


HIDING_PLACES: dict[str, tuple[Secret, bytes]] = {
    "a log field": (TOKEN, b'{"event": "polling", "token": "oanda-token-5f0c2a9e1d7b4c3a"}'),
    "the whsec_ text": (WEBHOOK_SECRET, f"secret={encode_secret(KEY)}".encode()),
    "the key's raw bytes": (WEBHOOK_SECRET, b"\x00\x01" + KEY + b"\xff"),
    "hex, as Postgres prints bytea": (
        WEBHOOK_SECRET,
        b'{"key": "\\\\x' + KEY.hex().encode() + b'"}',
    ),
    "upper-case hex": (WEBHOOK_SECRET, KEY.hex().upper().encode()),
    "url-safe base64, unpadded": (WEBHOOK_SECRET, base64.urlsafe_b64encode(KEY).rstrip(b"=")),
    "percent-encoded in a query string": (
        WEBHOOK_SECRET,
        ("/v1?secret=" + urllib.parse.quote(encode_secret(KEY), safe="")).encode(),
    ),
    "base64, 1 byte into a longer text": (TOKEN, _b64(b"a" + TOKEN.value + b"z").encode()),
    "base64, 2 bytes into a longer text": (TOKEN, _b64(b"ab" + TOKEN.value).encode()),
    "base64, 3 bytes into a longer text": (TOKEN, _b64(b"abc" + TOKEN.value).encode()),
    "a body, in a raw event, in a dead letter": (
        TOKEN,
        nested_in_a_dead_letter(b'{"note": "oanda-token-5f0c2a9e1d7b4c3a"}'),
    ),
    "the key, in a body, in a raw event, in a dead letter": (
        WEBHOOK_SECRET,
        nested_in_a_dead_letter(b"\x01\x02\x03" + KEY),
    ),
}


@pytest.mark.parametrize("place", list(HIDING_PLACES))
def test_the_search_finds_a_secret_however_it_is_written(place: str) -> None:
    secret, text = HIDING_PLACES[place]

    leaks = LeakSearch([WEBHOOK_SECRET, TOKEN]).in_bytes(place, text)

    assert [(leak.secret, leak.where) for leak in leaks] == [(secret.name, place)]


def test_the_search_does_not_mistake_what_is_derived_from_a_secret_for_the_secret() -> None:
    body = b'{"deals": []}'
    derived = {
        "a signature made with it": sign(KEY, "msg_1", 1717405200, body).encode(),
        "it, sealed under another key": seal(generate_key(), KEY, b"aad"),
        "its key id": repr(LocalKeyEncryptionKey(KEY)).encode(),
        "a dead letter of a body without it": nested_in_a_dead_letter(body),
    }

    found = {
        name: LeakSearch([WEBHOOK_SECRET]).in_bytes(name, text) for name, text in derived.items()
    }

    assert found == {name: [] for name in derived}


async def test_a_secret_planted_in_a_file_a_record_or_a_row_is_found_there_but_not_in_ciphertext(
    pool: asyncpg.Pool, vault: CredentialVault, kafka_bootstrap: str, tmp_path: Path
) -> None:
    token = f"oanda-token-{secrets.token_hex(12)}"
    search = LeakSearch([Secret.text("token", token)])
    log = tmp_path / "ingest.log"
    log.write_text(f'{{"event": "started"}}\n{{"event": "refused", "header": "Bearer {token}"}}\n')
    topic = f"test.{uuid.uuid4().hex[:8]}.leaks"
    await ensure_topics(kafka_bootstrap, [TopicSpec(topic, 1)])
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait(topic, b"{}", headers=[("authorization", token.encode())])
        await producer.send_and_wait(topic, orjson.dumps({"body_b64": _b64(token)}))
    finally:
        await producer.stop()

    async with pool.acquire() as conn:
        # Planted in a transaction that is rolled back, so it never meets the pipeline's search.
        transaction = conn.transaction()
        await transaction.start()
        try:
            planted = await new_connection(conn, vault)
            await conn.execute(
                "UPDATE mt5_connections SET last_error = $1 WHERE id = $2",
                f"login failed with {token}",
                planted.created.connection_id,
            )
            await conn.execute(
                "UPDATE mt5_credentials SET ciphertext = $1 WHERE connection_id = $2",
                token.encode(),
                planted.created.connection_id,
            )
            leaks = await search.in_database(conn, CIPHERTEXT_COLUMNS)
        finally:
            await transaction.rollback()
    leaks += search.in_files([log])
    leaks += search.in_records(await read_topic(kafka_bootstrap, topic))

    assert sorted(leak.where for leak in leaks) == [
        "ingest.log line 2",
        "public.mt5_connections.last_error",
        f"{topic} partition 0 offset 0 header authorization",
        f"{topic} partition 0 offset 1 value",
    ]


# --- The whole pipeline, with secrets planted -------------------------------------------------


@pytest.fixture
def oanda_api() -> Iterator[EchoingBroker]:
    """Where the poller finds OANDA: refusing the token, and echoing it back."""
    broker = EchoingBroker()
    with broker:
        yield broker


@dataclass(frozen=True)
class Planted:
    """A user with an MT5 and an OANDA connection, each with a webhook secret and stored broker
    credentials; `secrets` is everything that must never be seen outside ciphertext."""

    mt5: TestConnection
    oanda: NewConnection
    oanda_token: str = field(repr=False)
    mt5_password: str = field(repr=False)
    master_key: str = field(repr=False)
    secrets: tuple[Secret, ...] = field(repr=False)


async def unwrapped_data_key(conn: Connection, master_key: str, user_id: uuid.UUID) -> bytes:
    wrapped = await conn.fetchval(
        "SELECT wrapped_key FROM user_data_keys WHERE user_id = $1 AND version = 1", user_id
    )
    return LocalKeyEncryptionKey.from_base64(master_key).unwrap(wrapped, data_key_aad(user_id, 1))


@pytest.fixture
async def planted(
    pool: asyncpg.Pool,
    vault: CredentialVault,
    stack: DevStack,
    master_key: str,
    oanda_api: EchoingBroker,
) -> Planted:
    oanda_token = f"oanda-token-{secrets.token_hex(16)}"
    mt5_password = f"mt5-password-{secrets.token_hex(12)}"
    async with pool.acquire() as conn:
        mt5 = await new_connection(conn, vault, ingest_url=stack.ingest_url)
        # One transaction: the poller never sees the OANDA connection without its token.
        async with conn.transaction():
            oanda = await connect_broker_account(
                conn,
                vault,
                mt5.user_id,
                "oanda",
                f"101-004-{secrets.randbelow(10**7):07d}-001",
                server="fxpractice",
                account_label="OANDA practice",
                ingest_url=stack.ingest_url,
                api_url=oanda_api.url,
            )
            await vault.store(
                conn,
                user_id=mt5.user_id,
                connection_id=oanda.connection_id,
                kind=BROKER_CREDENTIALS,
                plaintext=oanda_token.encode(),
            )
            # Due now, not somewhere in its first interval: the poller uses the token in the run.
            await conn.execute(
                "UPDATE sync_schedule SET next_sync_at = now() WHERE connection_id = $1",
                oanda.connection_id,
            )
        await vault.store(
            conn,
            user_id=mt5.user_id,
            connection_id=mt5.created.connection_id,
            kind=BROKER_CREDENTIALS,
            plaintext=orjson.dumps(
                {"login": mt5.login, "password": mt5_password, "server": SERVER}
            ),
        )
        data_key = await unwrapped_data_key(conn, master_key, mt5.user_id)
    return Planted(
        mt5=mt5,
        oanda=oanda,
        oanda_token=oanda_token,
        mt5_password=mt5_password,
        master_key=master_key,
        secrets=(
            Secret.webhook_secret(
                "the MT5 connection's webhook secret", mt5.created.webhook_secret
            ),
            Secret.webhook_secret("the OANDA connection's webhook secret", oanda.webhook_secret),
            Secret.text("the OANDA API token", oanda_token),
            Secret.text("the MT5 password", mt5_password),
            Secret.base64_key("the master key", master_key),
            Secret.key("the user's data key", data_key),
        ),
    )


@dataclass(frozen=True)
class Delivery:
    label: str
    url: str
    body: bytes
    headers: dict[str, str]


def signed(
    label: str,
    connection: NewConnection,
    body: bytes,
    *,
    webhook_id: str | None = None,
    headers: dict[str, str] | None = None,
    query: str = "",
    sent_at: float | None = None,
) -> Delivery:
    """A delivery signed with the connection's secret, as its sender would send it."""
    signature = signed_headers(
        connection.webhook_secret, webhook_id or f"msg_{uuid.uuid4().hex}", body, sent_at
    )
    return Delivery(label, connection.webhook_url + query, body, signature | (headers or {}))


def the_senders_own_secrets(planted: Planted) -> dict[str, str]:
    """Secrets a careless sender puts in its own headers (the public MT5 EA sends its token in
    `x-user-token`): never logged, stored or echoed, whether the delivery is accepted or not."""
    return {
        "authorization": f"Bearer {planted.oanda_token}",
        "x-user-token": planted.mt5.created.webhook_secret,
        "x-mt5-password": planted.mt5_password,
        "cookie": f"poscal_key={planted.master_key}",
    }


def deliveries(planted: Planted) -> dict[str, list[Delivery]]:
    """What the run sends, grouped by the outcome each must have ("any": not asserted here)."""
    mt5 = planted.mt5.created
    deals = fixture_deals()
    valid = encode_body(mt5_body(planted.mt5.login, deals))
    note = b'{"note": "please ignore"}'
    own = the_senders_own_secrets(planted)
    leaked_in_query = "?" + urllib.parse.urlencode(
        {"token": planted.oanda_token, "secret": mt5.webhook_secret}
    )
    wrong_key = encode_secret(generate_key())
    key = decode_secret(mt5.webhook_secret)
    return {
        "journal": [
            signed("valid deals", mt5, valid, webhook_id="msg_valid"),
            signed(
                "valid deals, the sender's own secrets in its headers and query string",
                mt5,
                encode_body(mt5_body(planted.mt5.login, deals[:1])),
                headers=own,
                query=leaked_in_query,
            ),
        ],
        "any": [
            signed("the valid deals replayed", mt5, valid, webhook_id="msg_valid"),
            signed(
                "valid deals as text/plain",
                mt5,
                encode_body(mt5_body(planted.mt5.login, deals[1:])),
                headers={"content-type": "text/plain"},
            ),
        ],
        "dead letter": [
            signed("an unreadable body", mt5, b"\xff\xfe{not json", headers=own),
            signed("a note instead of deals, with a bearer token", mt5, note, headers=own),
            signed("an OANDA webhook that is not OANDA's", planted.oanda, note, headers=own),
        ],
        "413": [signed("an oversized body", mt5, b"x" * (300 * 1024), headers=own)],
        "401": [
            signed(
                "a webhook signed with another key",
                NewConnection(mt5.connection_id, mt5.account_id, mt5.webhook_url, wrong_key),
                valid,
                headers=own,
            ),
            with_signature(
                "the key itself as the signature",
                signed("", mt5, valid),
                "v1," + base64.b64encode(key).decode(),
            ),
            with_signature(
                "the whsec_ secret as the signature", signed("", mt5, valid), mt5.webhook_secret
            ),
            signed(
                "an unknown connection",
                NewConnection(
                    uuid.uuid4(),
                    mt5.account_id,
                    mt5.webhook_url.rsplit("/", 1)[0] + f"/{uuid.uuid4()}",
                    mt5.webhook_secret,
                ),
                valid,
                headers=own,
            ),
            signed("a stale timestamp", mt5, valid, headers=own, sent_at=time.time() - 3600),
        ],
    }


def with_signature(label: str, delivery: Delivery, signature: str) -> Delivery:
    return Delivery(
        label, delivery.url, delivery.body, delivery.headers | {"webhook-signature": signature}
    )


async def send(deliveries: list[Delivery]) -> list[tuple[str, httpx.Response]]:
    async with httpx.AsyncClient(timeout=10) as client:
        return [
            (d.label, await client.post(d.url, content=d.body, headers=d.headers))
            for d in deliveries
        ]


async def credentials_refused(
    pool: asyncpg.Pool, connection_id: uuid.UUID, wait_seconds: float = 30.0
) -> bool:
    """Whether the poller has polled the connection and recorded that the broker refused its
    credentials (waiting for it up to `wait_seconds`)."""
    deadline = time.monotonic() + wait_seconds
    while time.monotonic() < deadline:
        if await pool.fetchval(
            "SELECT credentials_rejected_at IS NOT NULL FROM sync_schedule"
            " WHERE connection_id = $1",
            connection_id,
        ):
            return True
        await asyncio.sleep(0.1)
    return False


async def ingest_spans_exported(
    stack: DevStack, otlp: RecordingOtlpReceiver, requests: int, wait_seconds: float = 15.0
) -> None:
    """Until ingest's span of every request is in its span file and at the OTLP receiver.

    Ingest loses the spans it has not exported yet when it stops (uvicorn re-raises SIGTERM
    after its shutdown, so `provider.shutdown()` never runs), so they are awaited first.
    """
    deadline = time.monotonic() + wait_seconds
    while time.monotonic() < deadline:
        in_file = [
            s
            for s in read_trace_dir(stack.traces)
            if s.service == "poscal-ingest" and s.kind == "SERVER"
        ]
        exported = [name for service, _, name in otlp.spans if service == "poscal-ingest"]
        if len(in_file) >= requests and len(exported) >= requests:
            return
        await asyncio.sleep(0.1)
    raise TimeoutError(f"ingest's spans of {requests} requests not exported in {wait_seconds}s")


async def test_no_planted_secret_appears_anywhere_the_pipeline_leaves_a_trace(
    pool: asyncpg.Pool,
    planted: Planted,
    stack: DevStack,
    otlp: RecordingOtlpReceiver,
    oanda_api: EchoingBroker,
    kafka_bootstrap: str,
) -> None:
    planned = deliveries(planted)
    # Accepted deliveries first: refusals come after, as their address gets throttled.
    sent = {outcome: await send(planned[outcome]) for outcome in planned}
    accepted = {
        r.json()["event_id"]
        for outcome in ("journal", "any")
        for _, r in sent[outcome]
        if r.status_code == 202
    }
    async with pool.acquire() as conn:
        written = await wait_for_events(conn, planted.mt5.created.connection_id, len(accepted))
    letters = await read_topic(kafka_bootstrap, stack.topics.dead_letter, expect=3, wait_seconds=30)
    refused_token = await credentials_refused(pool, planted.oanda.connection_id)
    requests = sum(len(outcome) for outcome in sent.values())
    await ingest_spans_exported(stack, otlp, requests)
    # The app API, asked with a good token and a forged one.
    assert stack.api_jwt_secret
    api_token = mint_token(stack.api_jwt_secret, planted.mt5.user_id, now=datetime.now(UTC))
    forged = api_token[:-6] + ("AAAAAA" if not api_token.endswith("AAAAAA") else "BBBBBB")
    signed_in = {"Authorization": f"Bearer {api_token}"}
    new_oanda_token = f"oanda-token-{secrets.token_hex(16)}"
    mt5_id, oanda_id = planted.mt5.created.connection_id, planted.oanda.connection_id
    async with httpx.AsyncClient(base_url=stack.api_url, timeout=10) as client:
        listed = await client.get("/v1/connections", headers=signed_in)
        refused = await client.get("/v1/me?token=x", headers={"Authorization": f"Bearer {forged}"})
        # The controls that take or make secrets: new credentials, a new webhook secret.
        stored = await client.put(
            f"/v1/connections/{oanda_id}/credentials",
            headers=signed_in,
            json={"credentials": new_oanda_token},
        )
        rotated = await client.post(
            f"/v1/connections/{mt5_id}/webhook-secret", headers=signed_in, json={}
        )
        api_answers = [
            (
                f"GET /v1/connections/{c}{path}",
                await client.get(f"/v1/connections/{c}{path}", headers=signed_in),
            )
            for c in (mt5_id, oanda_id)
            for path in ("", "/status", "/history")
        ] + [("PUT credentials", stored), ("GET /v1/connections", listed)]
    new_webhook_secret = rotated.json()["webhook_secret"]
    # Stopped, the services have flushed what else they had: nothing more can be written.
    stack.stop()

    search = LeakSearch(
        (
            *planted.secrets,
            Secret.text("the app API's JWT secret", stack.api_jwt_secret),
            Secret.text("an app API access token", api_token),
            Secret.text("a forged app API access token", forged),
            Secret.text("the OANDA token entered through the app API", new_oanda_token),
            # Shown once, in the answer to its rotation: nowhere else, that answer not searched.
            Secret.webhook_secret("the webhook secret the app API made", new_webhook_secret),
        )
    )
    topics = (stack.topics.raw, stack.topics.canonical, stack.topics.dead_letter)
    records = [record for topic in topics for record in await read_topic(kafka_bootstrap, topic)]
    leaks = [
        *search.in_files(sorted(stack.logs.glob("*.log"))),
        *search.in_files(sorted(stack.traces.glob("*.jsonl"))),
        *[
            leak
            for number, payload in enumerate(otlp.payloads)
            for leak in search.in_bytes(f"OTLP export {number}", payload)
        ],
        *search.in_records(records),
        *search.in_responses(response for outcome in sent.values() for response in outcome),
        *search.in_responses(api_answers),
    ]
    async with pool.acquire() as conn:
        leaks += await search.in_database(conn, CIPHERTEXT_COLUMNS)

    assert [str(leak) for leak in leaks] == []
    # ...and the run did what it was meant to, so that finding nothing means something.
    statuses = {
        o: [r.status_code for _, r in sent[o]] for o in ("journal", "dead letter", "413", "401")
    }
    assert statuses == {
        "journal": [202, 202],
        "dead letter": [202, 202, 202],
        "413": [413],
        # The unknown connection's is not counted; the fourth failure here is held off.
        "401": [401, 401, 401, 401, 429],
    }
    assert written == len(accepted)
    assert len(listed.json()["connections"]) == 2 and refused.status_code == 401
    assert (stored.status_code, rotated.status_code) == (200, 200)
    assert {r.status_code for _, r in api_answers} == {200}
    # The search read every event ingest accepted off the raw topic, however it was batched.
    on_raw = {
        str(RawEvent.model_validate_json(r.value).event_id)
        for r in records
        if r.topic == stack.topics.raw
    }
    assert on_raw == {
        r.json()["event_id"]
        for outcome in sent.values()
        for _, r in outcome
        if r.status_code == 202
    }
    reasons = sorted(DeadLetter.model_validate_json(r.value).reason_code for r in letters)
    assert len(reasons) >= 3 and {"malformed_json", "invalid_payload"} <= set(reasons)
    assert refused_token
    sent_to_oanda = {headers.get("authorization") for _, headers in oanda_api.requests}
    assert f"Bearer {planted.oanda_token}" in sent_to_oanda
    assert len(otlp.payloads) > 0
    assert {"file", "record", "response", "table"} <= set(search.looked_at)
    assert search.looked_at["file"] == 2 * len(SERVICES)  # each service's log and span file
    assert search.looked_at["response"] == sum(len(o) for o in sent.values()) + len(api_answers)
