"""Ingest's defences per source, against the real Postgres: failed verifications throttle the
address that sends them and can never lock out a sender whose signatures are good; every refusal
spends a refusal budget, and over it a client adds a bounded number of attempt rows while its
correctly signed deliveries still go through; a leaked URL is replaced without the connection
losing anything."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import asyncpg
import httpx
import pytest
from prometheus_client import REGISTRY
from structlog.testing import capture_logs

from services.devstack.demo import encode_body, signed_headers
from services.ingest.audit import Attempt
from services.ingest.instances import IngestInstance
from services.ingest.replays import Claim, DeliveryClaims, Replayed
from services.ingest.verification_failures import ThrottlePolicy, VerificationFailures
from services.shared.connection_admin.endpoints import (
    lock_connection,
    rotate_webhook_url,
    unlock_connection,
)
from services.shared.envelope import RawEvent, derive_event_id
from services.shared.errors import TransientError
from services.shared.signatures import encode_secret
from services.shared.vault import CredentialVault
from tests.support.builders import TestConnection, fixture_deals, mt5_body, new_connection
from tests.support.ingest import IngestStarter, RecordingSink, RunningIngest

pytestmark = pytest.mark.integration

# The test client's address is this proxy's, so each spec can send from any source it likes.
PROXY = "203.0.113.0/24"
STRANGER, SENDER, OTHER_STRANGER = "198.51.100.66", "198.51.100.7", "198.51.100.99"
FORGED = encode_secret(b"not the connection's secret at all")


@pytest.fixture
def ingest_with(ingest_with: IngestStarter) -> IngestStarter:
    """Every ingest app here sits behind our proxy (the one the test client's address is in)."""
    return ingest_with.defaulting(trusted_proxies=PROXY)


async def deliver(
    ingest: RunningIngest,
    connection: TestConnection,
    source: str,
    *,
    secret: str | None = None,
    webhook_id: str | None = None,
    path: str | None = None,
    content_type: str = "application/json",
) -> httpx.Response:
    body = encode_body(mt5_body(connection.login, fixture_deals()))
    headers = signed_headers(
        secret or connection.created.webhook_secret, webhook_id or f"msg_{uuid.uuid4().hex}", body
    )
    headers |= {"x-forwarded-for": source, "content-type": content_type}
    return await ingest.client.post(path or connection.webhook_path, content=body, headers=headers)


async def forged(ingest: RunningIngest, connection: TestConnection, source: str) -> httpx.Response:
    return await deliver(ingest, connection, source, secret=FORGED)


async def failures_of(pool: asyncpg.Pool, connection: TestConnection, source: str) -> int | None:
    failures: int | None = await pool.fetchval(
        "SELECT failures FROM webhook_verification_failures"
        " WHERE connection_id = $1 AND source = $2",
        connection.created.connection_id,
        source,
    )
    return failures


async def lifecycle_of(pool: asyncpg.Pool, connection: TestConnection) -> str:
    lifecycle: str = await pool.fetchval(
        "SELECT lifecycle FROM mt5_connections WHERE id = $1", connection.created.connection_id
    )
    return lifecycle


async def rotation_forced_reasons(pool: asyncpg.Pool, connection: TestConnection) -> list[str]:
    forced = await pool.fetch(
        "SELECT rotation_forced_reason FROM mt5_credentials WHERE connection_id = $1",
        connection.created.connection_id,
    )
    return [r["rotation_forced_reason"] for r in forced]


def metric(name: str) -> float:
    return REGISTRY.get_sample_value(name, {}) or 0.0


# --- failed verifications: the failing source is throttled, never the sender ----------------


async def test_a_stranger_failing_verification_never_locks_out_the_sender(
    pool: asyncpg.Pool, connection: TestConnection, ingest_with: IngestStarter, sink: RecordingSink
) -> None:
    async with ingest_with(failure_alert_threshold=3, failures_before_throttle=1) as ingest:
        answers = []
        for round_ in range(5):
            strangers = [(await forged(ingest, connection, STRANGER)).status_code for _ in range(4)]
            sender = await deliver(ingest, connection, SENDER, webhook_id=f"msg_good_{round_}")
            answers.append((strangers, sender.status_code))

    assert answers[0] == ([401, 429, 429, 429], 202)
    assert all(sender == 202 for _, sender in answers), answers
    assert all(set(strangers) == {429} for strangers, _ in answers[1:]), answers
    assert [e.delivery_id for e in sink.published] == [f"msg_good_{n}" for n in range(5)]
    assert await lifecycle_of(pool, connection) == "active"


async def test_a_failing_sources_wait_doubles_per_further_failure_up_to_the_cap_on_any_replica(
    pool: asyncpg.Pool, connection: TestConnection, ingest_with: IngestStarter
) -> None:
    answers = []
    for _ in range(6):  # a replica of its own each time: only the shared count can escalate
        async with ingest_with(
            failures_before_throttle=2, failure_throttle_cap_seconds=4
        ) as replica:
            response = await forged(replica, connection, STRANGER)
        answers.append((response.status_code, response.headers.get("retry-after")))
    assert answers == [
        (401, None),
        (401, None),
        (429, "1"),
        (429, "2"),
        (429, "4"),
        (429, "4"),
    ]
    assert await failures_of(pool, connection, STRANGER) == 6
    assert await failures_of(pool, connection, SENDER) is None


async def test_a_throttled_sources_failures_are_answered_from_memory_and_not_counted(
    pool: asyncpg.Pool, connection: TestConnection, ingest_with: IngestStarter
) -> None:
    # A source with a long run behind it: its next failure holds it off for the whole cap.
    await pool.execute(
        "INSERT INTO webhook_verification_failures (connection_id, source, user_id, failures,"
        " first_failure_at, last_failure_at) VALUES ($1, $2, $3, 20, now(), now())",
        connection.created.connection_id,
        STRANGER,
        connection.user_id,
    )
    async with ingest_with(failures_before_throttle=3, failure_throttle_cap_seconds=600) as ingest:
        answers = [await forged(ingest, connection, STRANGER) for _ in range(6)]
        counted = await failures_of(pool, connection, STRANGER)
        signed = await deliver(ingest, connection, STRANGER)  # the same source, signing well
        await ingest.settle()
    assert [(a.status_code, a.headers["retry-after"]) for a in answers[:1]] == [(429, "600")]
    assert all(a.status_code == 429 for a in answers)
    assert counted == 21  # only the first reached the database
    assert signed.status_code == 202
    reasons = await pool.fetch(
        "SELECT status_code, reason FROM webhook_attempts WHERE connection_id = $1 ORDER BY id",
        connection.created.connection_id,
    )
    assert [tuple(r) for r in reasons] == [(429, "signature_mismatch")] + [
        (429, "verification_throttled")
    ] * 5 + [(202, "accepted")]
    assert await failures_of(pool, connection, STRANGER) == 0  # its acceptance ended the run


async def test_a_source_reaching_the_alert_threshold_raises_an_alert_and_forces_rotation(
    pool: asyncpg.Pool, connection: TestConnection, ingest_with: IngestStarter
) -> None:
    alerts_before = metric("poscal_ingest_verification_alerts_total")
    async with ingest_with(failure_alert_threshold=3, failures_before_throttle=100) as ingest:
        with capture_logs() as logs:
            failures = [(await forged(ingest, connection, STRANGER)).status_code for _ in range(4)]
        consecutive = await pool.fetchval(
            "SELECT consecutive_failures FROM mt5_security_audit WHERE connection_id = $1",
            connection.created.connection_id,
        )
        signed = await deliver(ingest, connection, SENDER)

    assert failures == [401] * 4
    assert consecutive == 4  # the connection's aggregate counts every source
    assert signed.status_code == 202  # nothing was locked
    assert await lifecycle_of(pool, connection) == "active"
    [alert] = [entry for entry in logs if entry.get("alert") == "webhook_verification_failures"]
    assert alert["log_level"] == "error"
    assert (alert["scope"], alert["connection_id"], alert["source"], alert["failures"]) == (
        "source",
        str(connection.created.connection_id),
        STRANGER,
        3,
    )
    assert metric("poscal_ingest_verification_alerts_total") == alerts_before + 1
    assert await rotation_forced_reasons(pool, connection) == ["verification_failures"]


async def test_a_forgery_spread_over_many_addresses_raises_the_connection_wide_alert(
    pool: asyncpg.Pool, connection: TestConnection, ingest_with: IngestStarter
) -> None:
    # Each address stays below the threshold; together they cross it twice (3 and 6).
    addresses = [f"192.0.2.{n}" for n in range(1, 8)]
    alerts_before = metric("poscal_ingest_verification_alerts_total")
    async with ingest_with(failure_alert_threshold=3, failures_before_throttle=100) as ingest:
        with capture_logs() as logs:
            failures = [(await forged(ingest, connection, a)).status_code for a in addresses]
        signed = await deliver(ingest, connection, SENDER)

    assert failures == [401] * 7
    assert signed.status_code == 202
    alerts = [entry for entry in logs if entry.get("alert") == "webhook_verification_failures"]
    assert [(a["scope"], a["consecutive_failures"], a["source"]) for a in alerts] == [
        ("connection", 3, addresses[2]),
        ("connection", 6, addresses[5]),
    ]
    assert {a["connection_id"] for a in alerts} == {str(connection.created.connection_id)}
    assert metric("poscal_ingest_verification_alerts_total") == alerts_before + 2
    assert await rotation_forced_reasons(pool, connection) == ["verification_failures"]


async def test_a_verified_delivery_ends_the_run_of_its_own_source_only(
    pool: asyncpg.Pool, connection: TestConnection, ingest_with: IngestStarter
) -> None:
    async with ingest_with(failures_before_throttle=2) as ingest:
        for source in (SENDER, SENDER, STRANGER, STRANGER):
            assert (await forged(ingest, connection, source)).status_code == 401
        assert (await deliver(ingest, connection, SENDER)).status_code == 202
        await ingest.wiring.claims.drain()  # the acceptance is written off the request path
        after_reset = (await forged(ingest, connection, SENDER)).status_code
        stranger_still_counted = (await forged(ingest, connection, STRANGER)).status_code
    assert (await failures_of(pool, connection, SENDER), after_reset) == (1, 401)
    assert (await failures_of(pool, connection, STRANGER), stranger_still_counted) == (3, 429)


async def test_a_late_acceptance_never_erases_failures_counted_after_its_claim(
    pool: asyncpg.Pool, connection: TestConnection
) -> None:
    claims = DeliveryClaims(pool, lease_seconds=30)
    failures = VerificationFailures(
        pool, alert_threshold=100, policy=ThrottlePolicy(free=100, cap_seconds=1)
    )
    attempt = Attempt(
        broker="mt5",
        received_at=datetime.now(UTC),
        client_ip=SENDER,
        user_agent=None,
        connection_id=connection.created.connection_id,
        user_id=connection.user_id,
        reason="signature_mismatch",
    )
    ids = (connection.created.connection_id, connection.user_id)

    await failures.count(attempt, SENDER)  # before the claim: ended by the acceptance
    early = await claims.claim(*ids, "msg_early", uuid.uuid4())
    assert isinstance(early, Claim)
    claims.accepted(early, datetime.now(UTC), SENDER)
    await claims.drain()
    assert await failures_of(pool, connection, SENDER) == 0

    late = await claims.claim(*ids, "msg_late", uuid.uuid4())
    assert isinstance(late, Claim)
    await failures.count(attempt, SENDER)  # after the claim, before its acceptance is written
    claims.accepted(late, datetime.now(UTC), SENDER)
    await claims.drain()
    assert await failures_of(pool, connection, SENDER) == 1
    consecutive = await pool.fetchval(
        "SELECT consecutive_failures FROM mt5_security_audit WHERE connection_id = $1",
        connection.created.connection_id,
    )
    assert consecutive == 1


class AcceptanceWrittenMidClaim:
    """A pool on which a retry's claim statement reads the id as `publishing`, and the
    acceptance is then written (and forgotten by the replica) before the claim is answered."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self.claims: DeliveryClaims | None = None
        self.staged = False
        self._claim_read = asyncio.Event()
        self._accept_written = asyncio.Event()

    async def execute(self, query: str, *args: Any) -> str:
        if not self.staged:
            return await self._pool.execute(query, *args)
        await self._claim_read.wait()  # the acceptance, held until the retry's claim read the row
        try:
            return await self._pool.execute(query, *args)
        finally:
            self._accept_written.set()

    async def fetch(self, query: str, *args: Any) -> list[asyncpg.Record]:
        rows = await self._pool.fetch(query, *args)
        if self.staged and self.claims is not None:
            self._claim_read.set()
            await self._accept_written.wait()
            # The replica forgets the id once its mark is written, a step after the write.
            while self.claims._accepting:  # noqa: ASYNC110
                await asyncio.sleep(0)
        return rows


async def test_a_retry_claimed_while_the_acceptance_is_written_is_a_replay(
    pool: asyncpg.Pool, connection: TestConnection
) -> None:
    staged = AcceptanceWrittenMidClaim(pool)
    claims = DeliveryClaims(staged, lease_seconds=30)  # type: ignore[arg-type]
    staged.claims = claims
    ids = (connection.created.connection_id, connection.user_id)
    first = await claims.claim(*ids, "msg_raced", uuid.uuid4())
    assert isinstance(first, Claim)

    staged.staged = True
    claims.accepted(first, datetime.now(UTC), SENDER)  # its event is on Kafka
    retried = await claims.claim(*ids, "msg_raced", uuid.uuid4())
    await claims.drain()

    assert isinstance(retried, Replayed)  # not "in flight": it is durably accepted
    state = await pool.fetchval(
        "SELECT state FROM webhook_deliveries WHERE connection_id = $1 AND webhook_id = $2",
        connection.created.connection_id,
        "msg_raced",
    )
    assert state == "accepted"


async def test_an_operators_lock_refuses_verified_deliveries_until_unlocked(
    pool: asyncpg.Pool, connection: TestConnection, ingest_with: IngestStarter
) -> None:
    async with ingest_with() as ingest:
        async with pool.acquire() as conn:
            locked = await lock_connection(conn, connection.created.connection_id, "stolen key?")
        while_locked = await deliver(ingest, connection, SENDER)
        unsigned = await forged(ingest, connection, SENDER)
        async with pool.acquire() as conn:
            await unlock_connection(conn, connection.created.connection_id)
        unlocked = await deliver(ingest, connection, SENDER)
    assert locked.changed and locked.lifecycle == "locked"
    assert (while_locked.status_code, while_locked.json()["error"]) == (423, "locked")
    assert unsigned.status_code == 401  # only a sender who can sign learns of the lock
    assert unlocked.status_code == 202


# --- refusal budgets: every refusal spends one, over it records are folded, nobody is stopped --


def fresh_network() -> str:
    """An address in a /64 no other spec uses, so its attempt rows are this spec's alone."""
    return f"2001:db8:{uuid.uuid4().int % 0xFFFF:x}:{uuid.uuid4().int % 0xFFFF:x}::1"


def unknown_path() -> str:
    return f"/v1/webhooks/mt5/{uuid.uuid4()}"


async def rows_from(pool: asyncpg.Pool, address: str) -> list[asyncpg.Record]:
    return list(
        await pool.fetch(
            "SELECT connection_id, status_code, reason, attempts FROM webhook_attempts"
            " WHERE client_ip << $1::inet ORDER BY id",
            address.replace("::1", "::/64"),
        )
    )


async def test_a_stranger_exhausting_every_budget_it_can_from_the_senders_address_stops_nothing(
    pool: asyncpg.Pool,
    vault: CredentialVault,
    connection: TestConnection,
    ingest_with: IngestStarter,
) -> None:
    # One address (a NAT, a VPS, a proxy whose address is not trusted) shared by the sender
    # and a hostile tenant with a connection of its own.
    shared = fresh_network()
    async with pool.acquire() as conn:
        hostile = await new_connection(conn, vault)
    many = 40
    sender: list[int] = []
    hostile_refusals = 0
    async with ingest_with(
        refusals_per_client="3/hour", rate_limit_per_connection="8/hour", failures_before_throttle=3
    ) as ingest:

        async def then_the_sender_delivers(phase: list[httpx.Response]) -> None:
            nonlocal hostile_refusals
            hostile_refusals += sum(1 for answer in phase if answer.status_code != 202)
            sender.append((await deliver(ingest, connection, shared)).status_code)

        await then_the_sender_delivers(  # malformed and unknown URLs
            [
                await ingest.client.post(
                    "/v1/webhooks/mt5/not-a-uuid" if n % 2 else unknown_path(),
                    content=b"{}",
                    headers={"content-type": "application/json", "x-forwarded-for": shared},
                )
                for n in range(many)
            ]
        )
        await then_the_sender_delivers(  # the sender's URL, undeclared bodies
            [
                await deliver(ingest, connection, shared, content_type="text/plain")
                for _ in range(many)
            ]
        )
        await then_the_sender_delivers(  # the sender's URL, forged signatures
            [await forged(ingest, connection, shared) for _ in range(many)]
        )
        hostile_first = await deliver(ingest, hostile, shared, webhook_id="msg_hostile")
        await then_the_sender_delivers(  # its own replays: 409
            [await deliver(ingest, hostile, shared, webhook_id="msg_hostile") for _ in range(many)]
        )
        await then_the_sender_delivers(  # past its own connection's rate: 429
            [await deliver(ingest, hostile, shared) for _ in range(many)]
        )
        await ingest.wiring.claims.drain()
        sender_replay = await deliver(ingest, connection, shared, webhook_id="msg_sender")
        sender_replayed = [
            (await deliver(ingest, connection, shared, webhook_id="msg_sender")).status_code
            for _ in range(3)
        ]
    # Shut down: every open window's record is written.

    assert hostile_first.status_code == 202
    assert sender == [202] * 5  # after each of the stranger's phases
    assert (sender_replay.status_code, sender_replayed) == (202, [409, 409, 409])
    refused = [r for r in await rows_from(pool, shared) if r["status_code"] != 202]
    # Every request is accounted for, in a bounded number of rows.
    assert sum(r["attempts"] for r in refused) == hostile_refusals + 3
    assert len(refused) <= 30 < hostile_refusals
    # A fold never mixes connections: each record is its own connection's, or no connection's.
    folded = {(r["connection_id"], r["status_code"], r["reason"]) for r in refused}
    ids = {None, connection.created.connection_id, hostile.created.connection_id}
    assert {connection_id for connection_id, _, _ in folded} == ids
    assert (hostile.created.connection_id, 409, "replay") in folded
    # The hostile tenant's replays spent its own budget, not the sender's: the sender's are
    # within its own, each a row as usual.
    assert [
        r["attempts"]
        for r in refused
        if (r["connection_id"], r["status_code"]) == (connection.created.connection_id, 409)
    ] == [1, 1, 1]
    assert (hostile.created.connection_id, 429, "rate_limited_connection") in folded
    assert (None, 429, "rate_limited_refusals") in folded


async def test_over_its_budget_a_client_gets_429_for_a_bad_url_and_its_verified_deliveries_pass(
    pool: asyncpg.Pool, connection: TestConnection, ingest_with: IngestStarter
) -> None:
    client = fresh_network()

    async def post(ingest: RunningIngest, path: str, source: str) -> httpx.Response:
        headers = {"content-type": "application/json", "x-forwarded-for": source}
        return await ingest.client.post(path, content=b"{}", headers=headers)

    async with ingest_with(refusals_per_client="3/hour") as ingest:
        # Any refusal spends the address's budget: here an undeclared body, a forgery, a bad URL.
        spent = [
            (await deliver(ingest, connection, client, content_type="text/plain")).status_code,
            (await forged(ingest, connection, client)).status_code,
            (await post(ingest, unknown_path(), client)).status_code,
        ]
        unknown = await post(ingest, unknown_path(), client)
        malformed = await post(ingest, "/v1/webhooks/mt5/not-a-uuid", client)
        elsewhere = await post(ingest, unknown_path(), OTHER_STRANGER)
        signed = await deliver(ingest, connection, client)
    assert spent == [415, 401, 401]
    for held_off in (unknown, malformed):
        assert held_off.status_code == 429 and int(held_off.headers["retry-after"]) >= 1
        assert held_off.json()["error"] == "rate_limited"
    assert elsewhere.status_code == 401  # another address has a budget of its own
    assert signed.status_code == 202  # a known URL is verified first, and this one verifies
    rows = await rows_from(pool, client)
    assert [tuple(r) for r in rows] == [
        (connection.created.connection_id, 415, "unsupported_media_type", 1),
        (connection.created.connection_id, 401, "signature_mismatch", 1),
        (None, 401, "unknown_connection", 1),
        (None, 429, "rate_limited_refusals", 1),  # the first of its window, as it came
        (connection.created.connection_id, 202, "accepted", 1),
        (None, 429, "rate_limited_refusals", 1),  # the rest of the window, once it ended
    ]


async def test_an_over_budget_clients_refusals_add_two_rows_per_window_and_kind(
    pool: asyncpg.Pool, connection: TestConnection, ingest_with: IngestStarter
) -> None:
    noisy = fresh_network()
    async with ingest_with(refusals_per_client="2/hour") as ingest:
        refused = [(await forged(ingest, connection, noisy)).status_code for _ in range(2)]
        with capture_logs() as logs:
            throttled = [
                (
                    await ingest.client.post(
                        unknown_path(),
                        content=b"{}",
                        headers={
                            "content-type": "application/json",
                            # any address of its /64
                            "x-forwarded-for": noisy.replace("::1", f"::{n:x}"),
                        },
                    )
                ).status_code
                for n in range(30)
            ]
            # Refusals of its known URL are answered as ever, and folded alike.
            undeclared = [
                (await deliver(ingest, connection, noisy, content_type="text/plain")).status_code
                for _ in range(10)
            ]
        await ingest.settle()
    # Shut down: the open windows' records are written too.
    assert refused == [401, 401] and throttled == [429] * 30 and undeclared == [415] * 10
    rows = await rows_from(pool, noisy)
    assert [tuple(r)[1:] for r in rows] == [
        (401, "signature_mismatch", 1),
        (401, "signature_mismatch", 1),
        (429, "rate_limited_refusals", 1),  # the first of the window, as it came
        (415, "unsupported_media_type", 1),
        (429, "rate_limited_refusals", 29),  # the rest of each window, in one row
        (415, "unsupported_media_type", 9),
    ]
    assert len([e for e in logs if e["event"] == "webhook refused"]) == 2


async def test_throttled_attempts_held_in_a_window_are_never_behind_the_instances_progress(
    pool: asyncpg.Pool, connection: TestConnection, database_url: str, ingest_with: IngestStarter
) -> None:
    instance = IngestInstance(database_url, pool)
    await instance.register()

    def audited_for(wiring: Any) -> None:
        wiring.audit.instance_id = instance.instance_id  # as a started ingest has it

    async def flushed_through() -> datetime:
        value: datetime = await pool.fetchval(
            "SELECT flushed_through FROM ingest_instances WHERE instance_id = $1",
            instance.instance_id,
        )
        return value

    client = fresh_network()
    try:
        async with ingest_with(customize=audited_for, refusals_per_client="1/hour") as ingest:
            await deliver(ingest, connection, client, content_type="text/plain")  # spends it
            await deliver(ingest, connection, client, path=unknown_path())  # opens a window
            await deliver(ingest, connection, client, path=unknown_path())  # folded: held back
            first_held_by = datetime.now(UTC)
            for _ in range(3):
                await deliver(ingest, connection, client, path=unknown_path())
            await ingest.settle()
            # Were this process killed now, the gap would start at this mark: it must cover
            # the attempts in the open window, which no row holds yet.
            assert await flushed_through() <= first_held_by
            assert [r["attempts"] for r in await rows_from(pool, client)] == [1, 1]
        assert [r["attempts"] for r in await rows_from(pool, client)] == [1, 1, 4]
    finally:
        await instance.stop(clean=False)


async def test_a_senders_duplicates_of_an_id_still_being_stored_are_folded_not_a_new_ids_refusal(
    pool: asyncpg.Pool, connection: TestConnection, ingest_with: IngestStarter
) -> None:
    class HeldPublish:
        """Kafka acknowledges `msg_slow` only when told to."""

        def __init__(self) -> None:
            self.publishing = asyncio.Event()
            self.acknowledge = asyncio.Event()

        async def publish(self, event: RawEvent) -> None:
            if event.delivery_id == "msg_slow":
                self.publishing.set()
                await self.acknowledge.wait()

    sender = fresh_network()
    sink = HeldPublish()
    async with ingest_with(
        sink=sink, refusals_per_client="3/hour", rate_limit_per_connection="2/hour"
    ) as ingest:
        slow = asyncio.create_task(deliver(ingest, connection, sender, webhook_id="msg_slow"))
        await sink.publishing.wait()
        duplicates = [
            await deliver(ingest, connection, sender, webhook_id="msg_slow") for _ in range(30)
        ]
        new_id = await deliver(ingest, connection, sender, webhook_id="msg_new")
        sink.acknowledge.set()
        first = await slow
    assert {(d.status_code, d.json()["error"]) for d in duplicates} == {(503, "unavailable")}
    # Neither the refusal budget nor the rate the duplicates might have used stops a new id.
    assert (new_id.status_code, first.status_code) == (202, 202)
    in_flight = [r for r in await rows_from(pool, sender) if r["reason"] == "in_flight"]
    assert [r["attempts"] for r in in_flight] == [1, 1, 1, 1, 26]


async def test_our_own_503s_spend_nothing_of_the_clients_budget(
    connection: TestConnection, ingest_with: IngestStarter
) -> None:
    class Unreachable:
        async def publish(self, event: RawEvent) -> None:
            raise TransientError("broker unreachable")

    client = fresh_network()
    async with ingest_with(sink=Unreachable(), refusals_per_client="2/hour") as ingest:
        ours = [(await deliver(ingest, connection, client)).status_code for _ in range(5)]
        theirs = [
            (await deliver(ingest, connection, client, path=unknown_path())).status_code
            for _ in range(3)
        ]
    assert ours == [503] * 5
    assert theirs == [401, 401, 429]


# --- a leaked URL is replaced; the connection keeps everything -------------------------------


async def test_a_rotated_url_stops_the_old_one_and_the_connection_keeps_its_history(
    pool: asyncpg.Pool, connection: TestConnection, ingest_with: IngestStarter, sink: RecordingSink
) -> None:
    connection_id = connection.created.connection_id
    async with ingest_with(connection_cache_seconds=600) as ingest:
        await ingest.listening()
        before = await deliver(ingest, connection, SENDER, webhook_id="msg_before")  # cached
        async with pool.acquire() as conn:
            rotated = await rotate_webhook_url(conn, connection_id, "http://ingest")
        new_path = rotated.webhook_url.removeprefix("http://ingest")
        deadline = time.monotonic() + 5
        # Until the change notification arrives the cached connection answers: 409, a replay.
        while (
            old := await deliver(ingest, connection, SENDER, webhook_id="msg_before")
        ).status_code == 409:
            assert time.monotonic() < deadline, "the old URL is still served from the cache"
            await asyncio.sleep(0.05)
        after = await deliver(ingest, connection, SENDER, webhook_id="msg_after", path=new_path)
        replayed = await deliver(ingest, connection, SENDER, webhook_id="msg_before", path=new_path)
        await ingest.settle()

    assert new_path != connection.webhook_path and str(connection_id) not in new_path
    assert (before.status_code, old.status_code, after.status_code) == (202, 401, 202)
    assert replayed.status_code == 409  # its webhook ids are still its own
    assert [e.event_id for e in sink.published] == [
        derive_event_id(connection_id, "msg_before"),
        derive_event_id(connection_id, "msg_after"),
    ]
    assert {e.connection.connection_id for e in sink.published} == {connection_id}
    accepted = await pool.fetch(
        "SELECT webhook_id FROM webhook_attempts WHERE connection_id = $1 AND status_code = 202"
        " ORDER BY id",
        connection_id,
    )
    assert [r["webhook_id"] for r in accepted] == ["msg_before", "msg_after"]
