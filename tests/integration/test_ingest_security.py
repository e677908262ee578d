"""Ingest's front door against the real Postgres: replays and claims whose publisher died, media
types, ed25519 and rotated secrets, rate limits, an operator's lock, the attempt log, and a cache
that hears about changes at once. Failed verifications, refusal budgets and rotated URLs are
specified in test_ingest_sources.py."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from prometheus_client import REGISTRY

from services.devstack.demo import encode_body, signed_headers
from services.ingest.audit import AuditTrail
from services.ingest.change_listener import CHANNEL
from services.ingest.connections import ConnectionDirectory, VerifiableConnection
from services.ingest.replays import Claim, DeliveryClaims, InFlight
from services.ingest.retention import Retention
from services.shared import credential_kinds
from services.shared.connection_admin.credentials import rotate_webhook_secret
from services.shared.connection_admin.endpoints import lock_connection
from services.shared.database import create_pool
from services.shared.envelope import RawEvent, derive_event_id
from services.shared.errors import TransientError
from services.shared.signatures import encode_secret, sign, sign_v1a
from services.shared.vault import CredentialVault
from tests.support.builders import (
    TestConnection,
    connect_account,
    fixture_deals,
    mt5_body,
    new_connection,
    store_credential,
)
from tests.support.ingest import IngestStarter, RecordingSink, RunningIngest

pytestmark = pytest.mark.integration


def webhook_url(connection: TestConnection) -> str:
    return connection.webhook_path


def body_of(connection: TestConnection) -> bytes:
    return encode_body(mt5_body(connection.login, fixture_deals()))


async def deliver(
    ingest: RunningIngest,
    connection: TestConnection,
    webhook_id: str | None = None,
    *,
    secret: str | None = None,
    extra_headers: dict[str, str] | None = None,
) -> httpx.Response:
    body = body_of(connection)
    headers = signed_headers(
        secret or connection.created.webhook_secret, webhook_id or f"msg_{uuid.uuid4().hex}", body
    )
    return await ingest.client.post(
        webhook_url(connection), content=body, headers=headers | (extra_headers or {})
    )


async def deliver_badly_signed(ingest: RunningIngest, connection: TestConnection) -> int:
    forged = encode_secret(b"not the connection's secret at all")
    return (await deliver(ingest, connection, secret=forged)).status_code


async def attempts_of(pool: asyncpg.Pool, connection: TestConnection) -> list[dict[str, Any]]:
    rows = await pool.fetch(
        "SELECT user_id, status_code, reason, outcome, host(client_ip) AS client_ip, user_agent,"
        " webhook_id, event_id FROM webhook_attempts WHERE connection_id = $1 ORDER BY id",
        connection.created.connection_id,
    )
    return [dict(r) for r in rows]


async def security_audit(pool: asyncpg.Pool, connection: TestConnection) -> dict[str, Any]:
    row = await pool.fetchrow(
        "SELECT consecutive_failures, last_success_at, last_failure_at, host(last_ip) AS last_ip,"
        " last_user_agent FROM mt5_security_audit WHERE connection_id = $1",
        connection.created.connection_id,
    )
    assert row is not None
    return dict(row)


def metric(name: str, labels: dict[str, str] | None = None) -> float:
    return REGISTRY.get_sample_value(name, labels or {}) or 0.0


# --- replays ------------------------------------------------------------------------------


async def test_a_webhook_id_is_accepted_once_however_many_replicas_race_for_it(
    connection: TestConnection, sink: RecordingSink, ingest_with: IngestStarter
) -> None:
    async with ingest_with() as first, ingest_with() as second:
        answers = await asyncio.gather(
            *(deliver(replica, connection, "msg_raced") for replica in [first, second] * 5)
        )
    # Those that lost the race were told to retry (503) or, once it was accepted, 409.
    statuses = sorted(a.status_code for a in answers)
    assert statuses[0] == 202 and set(statuses[1:]) <= {409, 503}
    assert all("retry-after" in a.headers for a in answers if a.status_code == 503)
    assert [e.delivery_id for e in sink.published] == ["msg_raced"]


async def test_a_replay_is_refused_after_a_restart_and_audited(
    pool: asyncpg.Pool, connection: TestConnection, sink: RecordingSink, ingest_with: IngestStarter
) -> None:
    async with ingest_with() as before_restart:
        accepted = await deliver(before_restart, connection, "msg_once")
    async with ingest_with() as after_restart:
        replayed = await deliver(after_restart, connection, "msg_once")

    assert (accepted.status_code, replayed.status_code) == (202, 409)
    assert len(sink.published) == 1
    audited = await attempts_of(pool, connection)
    assert [(a["status_code"], a["reason"], a["webhook_id"]) for a in audited] == [
        (202, "accepted", "msg_once"),
        (409, "replay", "msg_once"),
    ]
    assert (
        await pool.fetchval(
            "SELECT state FROM webhook_deliveries WHERE connection_id = $1 AND webhook_id = $2",
            connection.created.connection_id,
            "msg_once",
        )
        == "accepted"
    )


async def test_the_same_webhook_id_on_another_connection_is_not_a_replay(
    pool: asyncpg.Pool, vault: CredentialVault, ingest_with: IngestStarter
) -> None:
    async with pool.acquire() as conn:
        one, other = [await new_connection(conn, vault) for _ in range(2)]
    async with ingest_with() as ingest:
        answers = [await deliver(ingest, c, "msg_shared") for c in (one, other)]
    assert [a.status_code for a in answers] == [202, 202]


class FailsOnce:
    """Kafka refuses the first event, then acknowledges."""

    def __init__(self) -> None:
        self.published: list[RawEvent] = []
        self._failed = False

    async def publish(self, event: RawEvent) -> None:
        if not self._failed:
            self._failed = True
            raise TransientError("broker unreachable")
        self.published.append(event)


async def test_a_webhook_id_whose_publish_failed_is_free_for_the_senders_retry(
    connection: TestConnection, ingest_with: IngestStarter
) -> None:
    sink = FailsOnce()
    async with ingest_with(sink=sink) as ingest:
        failed = await deliver(ingest, connection, "msg_retry")
        retried = await deliver(ingest, connection, "msg_retry")
    assert (failed.status_code, retried.status_code) == (503, 202)
    assert len(sink.published) == 1


async def claim_left_by_a_dead_publisher(
    pool: asyncpg.Pool, connection: TestConnection, webhook_id: str, claimed_ago: timedelta
) -> None:
    """A `publishing` claim as a replica killed between claim and publish leaves it."""
    await pool.execute(
        "INSERT INTO webhook_deliveries (connection_id, webhook_id, user_id, event_id, state,"
        " claim_token, claimed_at) VALUES ($1, $2, $3, $4, 'publishing', gen_random_uuid(),"
        " now() - $5::interval)",
        connection.created.connection_id,
        webhook_id,
        connection.user_id,
        derive_event_id(connection.created.connection_id, webhook_id),
        claimed_ago,
    )


async def test_a_webhook_id_whose_publisher_may_have_died_gets_503_until_its_lease_passes(
    pool: asyncpg.Pool, connection: TestConnection, sink: RecordingSink, ingest_with: IngestStarter
) -> None:
    await claim_left_by_a_dead_publisher(pool, connection, "msg_orphan", timedelta(seconds=5))
    async with ingest_with(claim_lease_seconds=30) as ingest:
        retried = await deliver(ingest, connection, "msg_orphan")
    # Never "already accepted": nothing is on Kafka, so the sender must keep retrying.
    assert retried.status_code == 503
    assert retried.json()["error"] == "unavailable"
    assert 20 <= int(retried.headers["retry-after"]) <= 25  # what is left of the lease
    assert sink.published == []


async def test_a_claim_past_its_lease_is_taken_over_and_only_then_the_id_is_a_replay(
    pool: asyncpg.Pool, connection: TestConnection, sink: RecordingSink, ingest_with: IngestStarter
) -> None:
    await claim_left_by_a_dead_publisher(pool, connection, "msg_orphan", timedelta(seconds=31))
    async with ingest_with(claim_lease_seconds=30) as ingest:
        taken_over = await deliver(ingest, connection, "msg_orphan")
        await ingest.wiring.claims.drain()  # the acceptance is written off the request path
        replayed = await deliver(ingest, connection, "msg_orphan")
    assert (taken_over.status_code, replayed.status_code) == (202, 409)
    assert [e.event_id for e in sink.published] == [
        derive_event_id(connection.created.connection_id, "msg_orphan")
    ]


async def test_the_same_webhook_id_twice_at_once_is_in_flight_not_a_replay(
    pool: asyncpg.Pool, connection: TestConnection
) -> None:
    claims = DeliveryClaims(pool, lease_seconds=30)
    ids = (connection.created.connection_id, connection.user_id, "msg_twice", uuid.uuid4())
    first, second = await asyncio.gather(claims.claim(*ids), claims.claim(*ids))
    assert isinstance(first, Claim)
    # The first may still fail to publish and release the id: the second must retry.
    assert second == InFlight(30)
    await claims.release(first)


class HeldClaimStatements:
    """A pool whose claim statements (fetch) are counted, the first held until released."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self.statements = 0
        self.first_sent = asyncio.Event()
        self.release = asyncio.Event()

    async def fetch(self, query: str, *args: Any) -> list[asyncpg.Record]:
        self.statements += 1
        if self.statements == 1:
            self.first_sent.set()
            await self.release.wait()
        return await self._pool.fetch(query, *args)

    async def execute(self, query: str, *args: Any) -> str:
        return await self._pool.execute(query, *args)


async def test_claims_arriving_while_a_claim_statement_is_under_way_are_written_by_one_more(
    pool: asyncpg.Pool, connection: TestConnection
) -> None:
    held = HeldClaimStatements(pool)
    claims = DeliveryClaims(held, lease_seconds=30, claim_writes=1)  # type: ignore[arg-type]
    ids = (connection.created.connection_id, connection.user_id)
    first = asyncio.ensure_future(claims.claim(*ids, "msg_first", uuid.uuid4()))
    await held.first_sent.wait()
    later = []
    for n in range(5):  # each in a loop turn of its own
        later.append(asyncio.ensure_future(claims.claim(*ids, f"msg_later_{n}", uuid.uuid4())))
        await asyncio.sleep(0)
    held.release.set()
    outcomes = await asyncio.gather(first, *later)

    assert all(isinstance(outcome, Claim) for outcome in outcomes)
    assert held.statements == 2
    for outcome in outcomes:
        assert isinstance(outcome, Claim)
        await claims.release(outcome)


async def test_a_claim_for_a_connection_deleted_meanwhile_costs_no_other_claim_in_its_batch(
    pool: asyncpg.Pool, vault: CredentialVault
) -> None:
    # Users may delete their own connections: a delivery verified against the cached one then
    # claims an id for a row that is gone, in the same statement as everyone else's claims.
    async with pool.acquire() as conn:
        other_tenant, deleted = [await new_connection(conn, vault) for _ in range(2)]
        await conn.execute(
            "DELETE FROM mt5_connections WHERE id = $1", deleted.created.connection_id
        )
    claims = DeliveryClaims(pool, lease_seconds=30)
    theirs, gone = await asyncio.gather(
        claims.claim(
            other_tenant.created.connection_id, other_tenant.user_id, "msg_theirs", uuid.uuid4()
        ),
        claims.claim(deleted.created.connection_id, deleted.user_id, "msg_gone", uuid.uuid4()),
        return_exceptions=True,
    )
    assert isinstance(theirs, Claim), theirs
    assert isinstance(gone, TransientError), gone  # answered 503 alone
    await claims.release(theirs)


async def test_auditing_that_cannot_write_loses_and_doubles_nothing(
    connection: TestConnection, sink: RecordingSink, database_url: str, ingest_with: IngestStarter
) -> None:
    unwritable = await create_pool(database_url, min_size=0, max_size=1)
    await unwritable.close()

    def audit_into_a_closed_pool(wiring: Any) -> None:
        wiring.audit = AuditTrail(unwritable)

    async with ingest_with(customize=audit_into_a_closed_pool) as ingest:
        accepted = await deliver(ingest, connection, "msg_unaudited")
        replayed = await deliver(ingest, connection, "msg_unaudited")
    assert (accepted.status_code, replayed.status_code) == (202, 409)
    assert len(sink.published) == 1


# --- what a delivery must look like ---------------------------------------------------------


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/xml", "json"])
async def test_a_body_not_declared_as_json_gets_415_and_publishes_nothing(
    connection: TestConnection,
    sink: RecordingSink,
    content_type: str | None,
    ingest_with: IngestStarter,
) -> None:
    body = body_of(connection)
    headers = signed_headers(connection.created.webhook_secret, "msg_media", body)
    del headers["content-type"]
    if content_type is not None:
        headers["content-type"] = content_type
    async with ingest_with() as ingest:
        response = await ingest.client.post(webhook_url(connection), content=body, headers=headers)
    assert response.status_code == 415
    assert response.json()["error"] == "unsupported_media_type"
    assert sink.published == []


@pytest.mark.parametrize(
    "content_type", ["application/json; charset=utf-8", "Application/JSON", "application/x+json"]
)
async def test_json_media_types_with_parameters_or_suffixes_are_accepted(
    connection: TestConnection, content_type: str, ingest_with: IngestStarter
) -> None:
    async with ingest_with() as ingest:
        response = await deliver(ingest, connection, extra_headers={"content-type": content_type})
    assert response.status_code == 202


# --- keys: ed25519 and rotation overlap -----------------------------------------------------


async def test_a_v1a_signature_verifies_against_the_connections_ed25519_public_key(
    pool: asyncpg.Pool,
    vault: CredentialVault,
    connection: TestConnection,
    ingest_with: IngestStarter,
) -> None:
    sender_key = Ed25519PrivateKey.generate()
    public = sender_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    await store_credential(pool, vault, connection, credential_kinds.WEBHOOK_PUBLIC_KEY, public)
    body = body_of(connection)

    def v1a_headers(key: Ed25519PrivateKey, webhook_id: str) -> dict[str, str]:
        now = int(time.time())
        return {
            "content-type": "application/json",
            "webhook-id": webhook_id,
            "webhook-timestamp": str(now),
            "webhook-signature": sign_v1a(key, webhook_id, now, body),
        }

    async with ingest_with() as ingest:
        signed = await ingest.client.post(
            webhook_url(connection), content=body, headers=v1a_headers(sender_key, "msg_ed1")
        )
        impostor = await ingest.client.post(
            webhook_url(connection),
            content=body,
            headers=v1a_headers(Ed25519PrivateKey.generate(), "msg_ed2"),
        )
    assert (signed.status_code, impostor.status_code) == (202, 401)


async def test_every_active_secret_verifies_and_an_expired_one_does_not(
    pool: asyncpg.Pool,
    vault: CredentialVault,
    connection: TestConnection,
    ingest_with: IngestStarter,
) -> None:
    newer, expired = b"n" * 32, b"e" * 32
    await store_credential(pool, vault, connection, credential_kinds.WEBHOOK_SECRET, newer)
    await store_credential(
        pool,
        vault,
        connection,
        credential_kinds.WEBHOOK_SECRET,
        expired,
        expires_at=datetime.now(UTC) - timedelta(seconds=1),
    )
    async with ingest_with() as ingest:
        statuses = [
            (await deliver(ingest, connection, secret=secret)).status_code
            for secret in (connection.created.webhook_secret, encode_secret(newer))
        ]
        after_expiry = await deliver(ingest, connection, secret=encode_secret(expired))
        statuses.append(after_expiry.status_code)
    assert statuses == [202, 202, 401]


async def test_a_header_with_several_signatures_verifies_if_any_matches(
    connection: TestConnection, ingest_with: IngestStarter
) -> None:
    body = body_of(connection)
    headers = signed_headers(connection.created.webhook_secret, "msg_multi", body)
    stale = sign(b"a retired secret", "msg_multi", int(headers["webhook-timestamp"]), body)
    headers["webhook-signature"] = f"{stale} v2,unknown {headers['webhook-signature']}"
    async with ingest_with() as ingest:
        response = await ingest.client.post(webhook_url(connection), content=body, headers=headers)
    assert response.status_code == 202


# --- rate limits ----------------------------------------------------------------------------


async def test_a_connection_over_its_rate_gets_429_with_retry_after_and_others_are_unaffected(
    pool: asyncpg.Pool, vault: CredentialVault, ingest_with: IngestStarter, sink: RecordingSink
) -> None:
    async with pool.acquire() as conn:
        busy, quiet = [await new_connection(conn, vault) for _ in range(2)]
    async with ingest_with(rate_limit_per_connection="3/minute") as ingest:
        statuses = [(await deliver(ingest, busy)).status_code for _ in range(3)]
        limited = await deliver(ingest, busy)
        unaffected = await deliver(ingest, quiet)
    assert statuses == [202, 202, 202]
    assert limited.status_code == 429
    assert limited.json()["error"] == "rate_limited"
    assert 1 <= int(limited.headers["retry-after"]) <= 60
    assert unaffected.status_code == 202
    assert len(sink.published) == 4


async def test_a_user_over_their_rate_is_limited_across_their_connections(
    pool: asyncpg.Pool, vault: CredentialVault, ingest_with: IngestStarter
) -> None:
    async with pool.acquire() as conn:
        first = await new_connection(conn, vault)
        another_login = 90_000_000 + uuid.uuid4().int % 10**7
        second = await connect_account(conn, vault, first.user_id, another_login)
    async with ingest_with(rate_limit_per_user="4/minute") as ingest:
        statuses = [(await deliver(ingest, c)).status_code for c in [first, second] * 3]
    assert statuses == [202, 202, 202, 202, 429, 429]


# --- the attempt log ------------------------------------------------------------------------


async def test_every_attempt_is_recorded_with_who_sent_it_and_the_aggregates_follow(
    pool: asyncpg.Pool, connection: TestConnection, ingest_with: IngestStarter
) -> None:
    agent = {"user-agent": "PosCal-EA/2.1"}
    async with ingest_with() as ingest:
        accepted = await deliver(ingest, connection, "msg_seen", extra_headers=agent)
        await deliver_badly_signed(ingest, connection)
        await ingest.settle()

    assert [(a["reason"], a["outcome"]) for a in await attempts_of(pool, connection)] == [
        ("accepted", "accepted"),
        ("signature_mismatch", "refused"),
    ]
    first = (await attempts_of(pool, connection))[0]
    assert first == {
        "user_id": connection.user_id,
        "status_code": 202,
        "reason": "accepted",
        "outcome": "accepted",
        "client_ip": "203.0.113.7",
        "user_agent": "PosCal-EA/2.1",
        "webhook_id": "msg_seen",
        "event_id": uuid.UUID(accepted.json()["event_id"]),
    }
    audit = await security_audit(pool, connection)
    assert audit["consecutive_failures"] == 1
    assert audit["last_success_at"] < audit["last_failure_at"]
    assert audit["last_ip"] == "203.0.113.7"


@pytest.mark.parametrize(
    ("trusted", "forwarded_for", "recorded"),
    [
        ("", "198.51.100.9", "203.0.113.7"),  # the peer is no proxy of ours: XFF is ignored
        ("203.0.113.0/24", "198.51.100.9", "198.51.100.9"),
        ("203.0.113.0/24, 10.0.0.0/8", "6.6.6.6, 198.51.100.9, 10.1.2.3", "198.51.100.9"),
    ],
)
async def test_the_client_ip_honours_only_trusted_proxies(
    pool: asyncpg.Pool,
    connection: TestConnection,
    trusted: str,
    forwarded_for: str,
    recorded: str,
    ingest_with: IngestStarter,
) -> None:
    async with ingest_with(trusted_proxies=trusted) as ingest:
        await deliver(ingest, connection, extra_headers={"x-forwarded-for": forwarded_for})
        await ingest.settle()
    [attempt] = await attempts_of(pool, connection)
    assert attempt["client_ip"] == recorded


async def test_attempts_at_unknown_connections_are_recorded_for_no_user(
    pool: asyncpg.Pool, ingest_with: IngestStarter
) -> None:
    unknown = uuid.uuid4()
    async with ingest_with() as ingest:
        response = await ingest.client.post(
            f"/v1/webhooks/mt5/{unknown}",
            content=b"{}",
            headers={"content-type": "application/json", "webhook-id": "msg_probe"},
        )
        await ingest.settle()
    assert response.status_code == 401
    row = await pool.fetchrow(
        "SELECT connection_id, user_id, reason FROM webhook_attempts WHERE webhook_path_id = $1",
        unknown,
    )
    assert row is not None
    assert dict(row) == {"connection_id": None, "user_id": None, "reason": "unknown_connection"}


async def test_refusals_are_counted_in_the_metrics(
    connection: TestConnection, ingest_with: IngestStarter
) -> None:
    labels = {"outcome": "refused", "reason": "signature_mismatch"}
    before = metric("poscal_ingest_webhooks_total", labels)
    async with ingest_with() as ingest:
        await deliver_badly_signed(ingest, connection)
        exposed = (await ingest.client.get("/metrics")).text
    assert metric("poscal_ingest_webhooks_total", labels) == before + 1
    assert "poscal_ingest_verification_alerts_total" in exposed


# --- the connection cache -------------------------------------------------------------------


async def until_listening_for_changes(pool: asyncpg.Pool, since: datetime) -> None:
    """Until a session opened after `since` has finished LISTENing for connection changes: from
    then on the ingest app caches connections and hears of every change."""
    for _ in range(1000):
        if await pool.fetchval(
            "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE backend_start >= $1"
            " AND state = 'idle' AND query = $2)",
            since,
            f'LISTEN "{CHANNEL}"',
        ):
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the ingest app never listened for connection changes")


async def test_a_cached_connection_is_forgotten_as_soon_as_it_changes(
    pool: asyncpg.Pool, connection: TestConnection, ingest_with: IngestStarter
) -> None:
    since = await pool.fetchval("SELECT clock_timestamp()")
    async with ingest_with(connection_cache_seconds=600) as ingest:
        await until_listening_for_changes(pool, since)
        assert (await deliver(ingest, connection)).status_code == 202  # now cached
        await pool.execute(
            "UPDATE mt5_connections SET lifecycle = 'paused' WHERE id = $1",
            connection.created.connection_id,
        )
        deadline = time.monotonic() + 5
        while (status := (await deliver(ingest, connection)).status_code) == 202:
            assert time.monotonic() < deadline, "the paused connection is still served from cache"
            await asyncio.sleep(0.05)
    assert status == 423  # paused: its sender is told to hold the delivery


async def test_a_listener_that_loses_its_session_listens_again_and_changes_still_reach_it(
    pool: asyncpg.Pool, connection: TestConnection, ingest_with: IngestStarter
) -> None:
    since = await pool.fetchval("SELECT clock_timestamp()")
    async with ingest_with(connection_cache_seconds=600) as ingest:
        await until_listening_for_changes(pool, since)
        lost = await pool.fetchval("SELECT clock_timestamp()")
        terminated = await pool.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE backend_start >= $1 AND query = $2",
            since,
            f'LISTEN "{CHANNEL}"',
        )
        await until_listening_for_changes(pool, lost)  # a session of its own again
        assert (await deliver(ingest, connection)).status_code == 202
        await pool.execute(
            "UPDATE mt5_connections SET lifecycle = 'paused' WHERE id = $1",
            connection.created.connection_id,
        )
        deadline = time.monotonic() + 5
        while (status := (await deliver(ingest, connection)).status_code) == 202:
            assert time.monotonic() < deadline, "the paused connection is still served from cache"
            await asyncio.sleep(0.05)
    assert terminated == 1
    assert status == 423


# --- retention ------------------------------------------------------------------------------


async def test_webhook_ids_and_attempts_are_forgotten_after_their_retention(
    pool: asyncpg.Pool, connection: TestConnection
) -> None:
    ref = connection.created.connection_id
    for webhook_id, age in [("msg_old", timedelta(days=8)), ("msg_recent", timedelta(days=6))]:
        await pool.execute(
            "INSERT INTO webhook_deliveries (connection_id, webhook_id, user_id, event_id, state,"
            " claim_token, claimed_at) VALUES ($1, $2, $3, gen_random_uuid(), 'accepted',"
            " gen_random_uuid(), now() - $4::interval)",
            ref,
            webhook_id,
            connection.user_id,
            age,
        )
        await pool.execute(
            "INSERT INTO webhook_attempts (connection_id, user_id, broker, outcome, status_code,"
            " reason, webhook_id, received_at) VALUES ($1, $2, 'mt5', 'accepted', 202,"
            " 'accepted', $3, now() - $4::interval * 12)",
            ref,
            connection.user_id,
            webhook_id,
            age,
        )
    retention = Retention(pool, timedelta(days=7), timedelta(days=90))
    await retention.prune_once()
    kept_ids = await pool.fetch(
        "SELECT webhook_id FROM webhook_deliveries WHERE connection_id = $1", ref
    )
    kept_attempts = await pool.fetch(
        "SELECT webhook_id FROM webhook_attempts WHERE connection_id = $1", ref
    )
    assert [r["webhook_id"] for r in kept_ids] == ["msg_recent"]
    assert [r["webhook_id"] for r in kept_attempts] == ["msg_recent"]


async def test_rotating_the_secret_unlocks_and_the_suspect_secret_stops_verifying(
    pool: asyncpg.Pool,
    vault: CredentialVault,
    connection: TestConnection,
    ingest_with: IngestStarter,
) -> None:
    async with pool.acquire() as conn:
        await lock_connection(conn, connection.created.connection_id)
    async with ingest_with() as ingest:
        assert (await deliver(ingest, connection)).status_code == 423
        async with pool.acquire() as conn:
            rotated = await rotate_webhook_secret(
                conn, vault, connection.created.connection_id, overlap=None
            )
        with_new_secret = await deliver(ingest, connection, secret=rotated.webhook_secret)
        with_old_secret = await deliver(ingest, connection)
    assert rotated.unlocked
    assert (with_new_secret.status_code, with_old_secret.status_code) == (202, 401)
    assert (
        await pool.fetchval(
            "SELECT lifecycle FROM mt5_connections WHERE id = $1", connection.created.connection_id
        )
        == "active"
    )


# --- review follow-ups ----------------------------------------------------------------------


async def test_replays_do_not_use_up_the_senders_allowance(
    connection: TestConnection, ingest_with: IngestStarter
) -> None:
    async with ingest_with(rate_limit_per_connection="3/minute") as ingest:
        first = await deliver(ingest, connection, "msg_captured")
        replays = [
            (await deliver(ingest, connection, "msg_captured")).status_code for _ in range(5)
        ]
        fresh = [(await deliver(ingest, connection)).status_code for _ in range(2)]
    assert (first.status_code, replays, fresh) == (202, [409] * 5, [202, 202])


async def test_every_forwarded_for_line_counts_not_only_the_first(
    pool: asyncpg.Pool, connection: TestConnection, ingest_with: IngestStarter
) -> None:
    body = body_of(connection)
    headers = list(signed_headers(connection.created.webhook_secret, "msg_xff", body).items())
    # The client forged a first line; our proxy added its own line with the real address.
    headers += [("x-forwarded-for", "6.6.6.6"), ("x-forwarded-for", "198.51.100.9")]
    async with ingest_with(trusted_proxies="203.0.113.0/24") as ingest:
        response = await ingest.client.post(webhook_url(connection), content=body, headers=headers)
        await ingest.settle()
    assert response.status_code == 202
    [attempt] = await attempts_of(pool, connection)
    assert attempt["client_ip"] == "198.51.100.9"


async def test_a_connection_changed_while_it_was_being_read_is_not_cached(
    pool: asyncpg.Pool, vault: CredentialVault, connection: TestConnection
) -> None:
    reading, changed = asyncio.Event(), asyncio.Event()

    class SlowDirectory(ConnectionDirectory):
        async def _load(self, connection_id: uuid.UUID) -> VerifiableConnection | None:
            found = await super()._load(connection_id)
            reading.set()
            await changed.wait()  # the change notification arrives now
            return found

    directory = SlowDirectory(pool, vault, ttl_seconds=600)
    lookup = asyncio.create_task(directory.find(connection.webhook_path_id))
    await reading.wait()
    directory.forget(connection.created.connection_id)
    changed.set()
    assert await lookup is not None
    loads_before = reading.is_set()
    reading.clear()
    changed.set()
    await directory.find(connection.webhook_path_id)
    assert loads_before and reading.is_set(), "the stale read was served from the cache"


class HeldDirectory(ConnectionDirectory):
    """Counts its reads of connections; each is held until `release` is set."""

    def __init__(self, pool: asyncpg.Pool, vault: CredentialVault) -> None:
        super().__init__(pool, vault, ttl_seconds=600)
        self.loads = 0
        self.reading = asyncio.Event()
        self.release = asyncio.Event()

    async def _load(self, path_id: uuid.UUID) -> VerifiableConnection | None:
        self.loads += 1
        self.reading.set()
        await self.release.wait()
        return await super()._load(path_id)


async def test_requests_missing_the_cache_together_read_the_connection_once(
    pool: asyncpg.Pool, vault: CredentialVault, connection: TestConnection
) -> None:
    directory = HeldDirectory(pool, vault)
    first = asyncio.ensure_future(directory.find(connection.webhook_path_id))
    await directory.reading.wait()
    others = [asyncio.ensure_future(directory.find(connection.webhook_path_id)) for _ in range(5)]
    await asyncio.sleep(0)
    directory.release.set()
    found = await asyncio.gather(first, *others)

    assert directory.loads == 1
    assert {f.ref.connection_id if f else None for f in found} == {connection.created.connection_id}


async def test_a_request_after_a_change_does_not_wait_for_a_read_begun_before_it(
    pool: asyncpg.Pool, vault: CredentialVault, connection: TestConnection
) -> None:
    directory = HeldDirectory(pool, vault)
    before = asyncio.ensure_future(directory.find(connection.webhook_path_id))
    await directory.reading.wait()
    directory.forget(connection.created.connection_id)  # the row changed meanwhile
    after = asyncio.ensure_future(directory.find(connection.webhook_path_id))
    await asyncio.sleep(0)
    directory.release.set()
    await asyncio.gather(before, after)

    assert directory.loads == 2
