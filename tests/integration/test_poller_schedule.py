"""The poller's schedule and sync against the real Postgres, with a scripted broker: leases keep
replicas off each other's connections (each lease has its own token, a running sync renews it and
stops once it is lost), the cursor moves only after a publish and never back, failures back off
and turn into an alert, a broker's request to wait is not a failure the first time, refused
credentials stop syncing until new ones arrive (whenever they commit), a connection without
credentials waits for them without failing, live waits for demo, an operator's lock of the
webhooks does not stop polling, and one user's connections take turns across replicas."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from prometheus_client import REGISTRY
from structlog.testing import capture_logs

from services.poller.retry import FailurePolicy
from services.poller.schedule import DueSync, LeaseLost, SyncSchedule
from services.poller.syncing import ConnectionSync, Poller
from services.shared import credential_kinds
from services.shared.brokers.errors import BrokerUnavailable, CredentialsRejected
from services.shared.brokers.polling import AdapterContext, AdapterFactory, BrokerAdapter, Delta
from services.shared.connection_admin.connections import ConnectionRefused, schedule_connection
from services.shared.connection_admin.credentials import set_broker_credentials
from services.shared.connection_admin.live import enable_live
from services.shared.sync_limits import UserSyncLimit
from services.shared.vault import CredentialVault
from tests.support.builders import TestConnection, connect_account, new_connection
from tests.support.ingest import RecordingSink
from tests.support.polling import TOKEN, polled

pytestmark = pytest.mark.integration


@dataclass
class ScriptedBroker:
    """A broker whose next answers the test decides; remembers the cursors it was asked from."""

    pages: list[Delta] = field(default_factory=list)
    failure: Exception | None = None
    # Each page waits until `gate` is set (if there is one); after `stall_after` pages the
    # broker never answers. `asked` is set once it is asked for pages.
    gate: asyncio.Event | None = None
    stall_after: int | None = None
    asked: asyncio.Event = field(default_factory=asyncio.Event)
    asked_from: list[str | None] = field(default_factory=list)
    credentials_seen: list[bytes] = field(default_factory=list)

    def factory(self) -> Callable[[str], AdapterFactory]:
        broker = self

        class Adapter:
            def __init__(self, context: AdapterContext) -> None:
                broker.credentials_seen.append(context.credentials)

            async def authenticate(self) -> None:
                if broker.failure is not None:
                    raise broker.failure

            async def fetch_account(self) -> dict[str, Any]:
                return {}

            async def fetch_closed_trades(self, cursor: str | None) -> AsyncIterator[Delta]:
                broker.asked_from.append(cursor)
                broker.asked.set()
                for number, page in enumerate(broker.pages):
                    if number == broker.stall_after:
                        await asyncio.Event().wait()
                    if broker.gate is not None:
                        await broker.gate.wait()
                    yield page

            async def fetch_open_trades(self) -> list[dict[str, Any]]:
                return []

        def create(context: AdapterContext) -> BrokerAdapter:
            return Adapter(context)

        return lambda _broker: create


def page(number: int) -> Delta:
    return Delta(
        body=b'{"page": %d}' % number,
        content_type="application/json",
        delivery_id=f"scripted:page:{number}",
        next_cursor=str(number * 100),
    )


async def schedule_row(pool: asyncpg.Pool, connection: TestConnection) -> dict[str, Any]:
    row = await pool.fetchrow(
        "SELECT s.*, c.lifecycle, c.status, c.last_error AS connection_error FROM sync_schedule s"
        " JOIN mt5_connections c ON c.id = s.connection_id WHERE s.connection_id = $1",
        connection.created.connection_id,
    )
    assert row is not None
    return dict(row)


async def until_the_database_clock_passes(pool: asyncpg.Pool, moment: datetime) -> None:
    """Until `now()` in Postgres, the clock leases are measured by, is past `moment`."""
    for _ in range(1000):
        left: float = await pool.fetchval(
            "SELECT extract(epoch FROM $1::timestamptz - now())::float8", moment
        )
        if left < 0:
            return
        await asyncio.sleep(left + 0.01)
    raise AssertionError(f"the database clock never passed {moment}")


async def make_due(pool: asyncpg.Pool, connection: TestConnection) -> None:
    await pool.execute(
        "UPDATE sync_schedule SET next_sync_at = now() - interval '1 second'"
        " WHERE connection_id = $1",
        connection.created.connection_id,
    )


async def lease_one(schedule: SyncSchedule, connection: TestConnection) -> DueSync | None:
    """Lease what is due and keep only `connection` (other tests' rows may be due too)."""
    for due in await schedule.lease_due(1000):
        if due.connection.connection_id == connection.created.connection_id:
            return due
        await schedule.postpone(due.lease, 0)
    return None


def syncer(
    pool: asyncpg.Pool,
    vault: CredentialVault,
    schedule: SyncSchedule,
    broker: ScriptedBroker,
    sink: Any,
) -> ConnectionSync:
    return ConnectionSync(
        pool=pool,
        vault=vault,
        schedule=schedule,
        sink=sink,
        http=None,  # type: ignore[arg-type]  # the scripted broker makes no HTTP calls
        retry=FailurePolicy(base_seconds=30, cap_seconds=3600, failures_before_error=3),
        jitter=lambda: 0.5,
        adapters=broker.factory(),
    )


async def test_two_replicas_racing_for_due_connections_never_lease_the_same_one(
    pool: asyncpg.Pool, vault: CredentialVault
) -> None:
    connections = [await polled(pool, vault) for _ in range(6)]
    ours = {c.created.connection_id for c in connections}
    first, second = SyncSchedule(pool, "replica-a", 60), SyncSchedule(pool, "replica-b", 60)
    leased_a, leased_b = await asyncio.gather(first.lease_due(1000), second.lease_due(1000))
    a = {d.connection.connection_id for d in leased_a} & ours
    b = {d.connection.connection_id for d in leased_b} & ours
    assert not a & b
    assert a | b == ours


async def test_a_leased_connection_is_free_again_only_when_its_lease_has_run_out(
    pool: asyncpg.Pool, vault: CredentialVault
) -> None:
    connection = await polled(pool, vault)
    stuck, rescuer = SyncSchedule(pool, "stuck", 300), SyncSchedule(pool, "rescuer", 300)
    held = await lease_one(stuck, connection)
    assert held is not None
    assert await lease_one(rescuer, connection) is None

    await pool.execute(
        "UPDATE sync_schedule SET lease_until = now() - interval '1 second'"
        " WHERE connection_id = $1",
        connection.created.connection_id,
    )
    assert await lease_one(rescuer, connection) is not None
    with pytest.raises(LeaseLost):  # the stuck replica wakes up: it may no longer write
        await stuck.save_cursor(held.lease, "999")


async def test_each_page_is_published_before_its_cursor_is_saved_and_the_next_sync_resumes_there(
    pool: asyncpg.Pool, vault: CredentialVault
) -> None:
    connection = await polled(pool, vault)
    broker, sink = ScriptedBroker(pages=[page(1), page(2)]), RecordingSink()
    schedule = SyncSchedule(pool, "replica", 60)
    sync = syncer(pool, vault, schedule, broker, sink)

    due = await lease_one(schedule, connection)
    assert due is not None and await sync.run(due) == "synced"
    assert [e.delivery_id for e in sink.published] == ["scripted:page:1", "scripted:page:2"]
    assert all(e.source == "poller" for e in sink.published)
    assert broker.credentials_seen == [TOKEN]
    row = await schedule_row(pool, connection)
    assert row["cursor"] == "200" and row["last_success_at"] is not None
    assert row["lease_owner"] is None
    assert timedelta(seconds=50) < row["next_sync_at"] - datetime.now(UTC) < timedelta(seconds=70)

    await make_due(pool, connection)
    broker.pages = []
    again = await lease_one(schedule, connection)
    assert again is not None and await sync.run(again) == "synced"
    assert broker.asked_from == [None, "200"]


class CrashAfterPublish(RecordingSink):
    """Publishes, then the process dies before the cursor is saved."""

    def __init__(self, crash_on: int) -> None:
        super().__init__()
        self._crash_on = crash_on

    async def publish(self, event: Any) -> None:
        await super().publish(event)
        if len(self.published) == self._crash_on:
            raise RuntimeError("killed between publish and cursor save")


async def test_a_crash_between_publish_and_cursor_save_republishes_the_same_event(
    pool: asyncpg.Pool, vault: CredentialVault
) -> None:
    connection = await polled(pool, vault)
    broker, sink = ScriptedBroker(pages=[page(1)]), CrashAfterPublish(crash_on=1)
    schedule = SyncSchedule(pool, "replica", 60)
    sync = syncer(pool, vault, schedule, broker, sink)
    due = await lease_one(schedule, connection)
    assert due is not None and await sync.run(due) == "failed"
    assert (await schedule_row(pool, connection))["cursor"] is None

    await make_due(pool, connection)
    retried = await lease_one(schedule, connection)
    assert retried is not None and await sync.run(retried) == "synced"
    first, second = sink.published
    assert first.event_id == second.event_id  # the writer records it once
    assert (await schedule_row(pool, connection))["cursor"] == "100"


async def test_failures_back_off_and_more_than_three_in_a_row_raise_an_alert_and_an_error(
    pool: asyncpg.Pool, vault: CredentialVault
) -> None:
    connection = await polled(pool, vault)
    broker = ScriptedBroker(failure=BrokerUnavailable("HTTP 503 from the broker"))
    schedule = SyncSchedule(pool, "replica", 60)
    sync = syncer(pool, vault, schedule, broker, RecordingSink())
    delays = []
    with capture_logs() as logs:
        for _ in range(4):
            await make_due(pool, connection)
            due = await lease_one(schedule, connection)
            assert due is not None and await sync.run(due) == "failed"
            row = await schedule_row(pool, connection)
            delays.append((row["next_sync_at"] - datetime.now(UTC)).total_seconds())
            statuses = row["status"]

    assert row["consecutive_failures"] == 4
    assert [round(d / 10) * 10 for d in delays] == [20, 40, 90, 180]  # 0.75 x 30 s x 2^n
    assert statuses == "error"
    assert "HTTP 503" in row["connection_error"]
    [alert] = [entry for entry in logs if entry.get("alert") == "sync_failing"]
    assert alert["log_level"] == "error"

    broker.failure = None
    await make_due(pool, connection)
    recovered = await lease_one(schedule, connection)
    assert recovered is not None and await sync.run(recovered) == "synced"
    row = await schedule_row(pool, connection)
    assert (row["status"], row["consecutive_failures"], row["last_error"]) == ("idle", 0, None)
    assert (row["lifecycle"], row["connection_error"]) == ("active", None)


async def test_a_broker_asking_to_wait_is_waited_out_and_counts_as_a_failure_only_when_repeated(
    pool: asyncpg.Pool, vault: CredentialVault
) -> None:
    connection = await polled(pool, vault)
    broker = ScriptedBroker(failure=BrokerUnavailable("HTTP 429", retry_after=900))
    schedule = SyncSchedule(pool, "replica", 60)
    sync = syncer(pool, vault, schedule, broker, RecordingSink())

    async def attempt() -> tuple[str, dict[str, Any]]:
        await make_due(pool, connection)
        due = await lease_one(schedule, connection)
        assert due is not None
        outcome = await sync.run(due)
        return outcome, await schedule_row(pool, connection)

    outcome, row = await attempt()
    assert outcome == "told_to_wait"
    assert row["next_sync_at"] - datetime.now(UTC) > timedelta(seconds=890)
    assert (row["consecutive_failures"], row["status"]) == (0, "idle")
    assert "HTTP 429" in row["last_error"]

    for failures in (1, 2):  # asked again on the very next attempt: now it counts
        outcome, row = await attempt()
        assert outcome == "failed"
        assert row["consecutive_failures"] == failures
        assert row["next_sync_at"] - datetime.now(UTC) > timedelta(seconds=890)

    broker.failure = None
    assert (await attempt())[0] == "synced"
    broker.failure = BrokerUnavailable("HTTP 429", retry_after=900)
    outcome, row = await attempt()  # after a success, a first request to wait is free again
    assert (outcome, row["consecutive_failures"]) == ("told_to_wait", 0)


async def test_a_broker_failure_without_retry_after_is_counted_at_once(
    pool: asyncpg.Pool, vault: CredentialVault
) -> None:
    connection = await polled(pool, vault)
    broker = ScriptedBroker(failure=BrokerUnavailable("HTTP 503"))
    schedule = SyncSchedule(pool, "replica", 60)
    due = await lease_one(schedule, connection)
    assert due is not None
    assert await syncer(pool, vault, schedule, broker, RecordingSink()).run(due) == "failed"
    assert (await schedule_row(pool, connection))["consecutive_failures"] == 1


async def broker_credential_ids(pool: asyncpg.Pool, connection: TestConnection) -> list[uuid.UUID]:
    rows = await pool.fetch(
        "SELECT id FROM mt5_credentials WHERE connection_id = $1 AND kind = $2 ORDER BY created_at",
        connection.created.connection_id,
        credential_kinds.BROKER_CREDENTIALS,
    )
    return [r["id"] for r in rows]


async def test_refused_credentials_stop_syncing_until_new_ones_are_stored(
    pool: asyncpg.Pool, vault: CredentialVault
) -> None:
    connection = await polled(pool, vault)
    broker = ScriptedBroker(failure=CredentialsRejected(401, "invalid token"))
    schedule = SyncSchedule(pool, "replica", 60)
    sync = syncer(pool, vault, schedule, broker, RecordingSink())
    due = await lease_one(schedule, connection)
    with capture_logs() as logs:
        assert due is not None and await sync.run(due) == "credentials_rejected"

    row = await schedule_row(pool, connection)
    assert row["status"] == "error" and row["credentials_rejected_at"] is not None
    assert row["rejected_credential_id"] == (await broker_credential_ids(pool, connection))[0]
    assert row["consecutive_failures"] == 1
    assert "set-credentials" in row["connection_error"]
    assert [e["alert"] for e in logs if "alert" in e] == ["sync_credentials_rejected"]
    marked = await pool.fetchval(
        "SELECT rotation_forced_reason FROM mt5_credentials WHERE connection_id = $1 AND kind = $2",
        connection.created.connection_id,
        credential_kinds.BROKER_CREDENTIALS,
    )
    assert marked == "rejected_by_broker"
    await make_due(pool, connection)
    assert await lease_one(schedule, connection) is None  # no point asking again

    replaced = '{"login": "7001", "password": "a new one", "server": "PosCal-Test"}'
    async with pool.acquire() as conn:
        await set_broker_credentials(conn, vault, connection.created.connection_id, replaced)
    broker.failure = None
    retried = await lease_one(schedule, connection)
    assert retried is not None and await sync.run(retried) == "synced"
    assert b"a new one" in broker.credentials_seen[-1]
    assert (await schedule_row(pool, connection))["status"] == "idle"


NEW_LOGIN = '{"login": "7001", "password": "a new one", "server": "PosCal-Test"}'


def untroubled(row: dict[str, Any]) -> tuple[object, ...]:
    """What a failure, an error or a refusal would have changed."""
    return (
        row["status"],
        row["consecutive_failures"],
        row["last_error"],
        row["credentials_rejected_at"],
        row["rejected_credential_id"],
    )


UNTROUBLED = ("idle", 0, None, None, None)


async def test_a_connection_without_credentials_waits_for_them_without_failing_or_alerting(
    pool: asyncpg.Pool, vault: CredentialVault
) -> None:
    async with pool.acquire() as conn:
        connection = await new_connection(conn, vault)
        await schedule_connection(conn, connection.created.connection_id)
    await make_due(pool, connection)
    schedule = SyncSchedule(pool, "replica", 60)
    broker = ScriptedBroker(pages=[page(1)])

    with capture_logs() as logs:
        waiting = await lease_one(schedule, connection)
        row = await schedule_row(pool, connection)
        async with pool.acquire() as conn:
            await set_broker_credentials(conn, vault, connection.created.connection_id, NEW_LOGIN)
        due = await lease_one(schedule, connection)
        assert due is not None
        outcome = await syncer(pool, vault, schedule, broker, RecordingSink()).run(due)

    assert waiting is None  # not polled: nothing to sign in with
    assert untroubled(row) == UNTROUBLED and row["last_attempt_at"] is None
    assert outcome == "synced" and b"a new one" in broker.credentials_seen[-1]
    assert [e for e in logs if "alert" in e or e["log_level"] in ("warning", "error")] == []


async def test_a_credential_gone_after_the_lease_is_waited_for_not_counted_as_a_failure(
    pool: asyncpg.Pool, vault: CredentialVault
) -> None:
    connection = await polled(pool, vault)
    schedule = SyncSchedule(pool, "replica", 60)
    broker = ScriptedBroker(pages=[page(1)])
    sync = syncer(pool, vault, schedule, broker, RecordingSink())
    due = await lease_one(schedule, connection)
    assert due is not None
    await pool.execute(
        "UPDATE mt5_credentials SET revoked_at = now() WHERE connection_id = $1 AND kind = $2",
        connection.created.connection_id,
        credential_kinds.BROKER_CREDENTIALS,
    )

    with capture_logs() as logs:
        outcome = await sync.run(due)
    row = await schedule_row(pool, connection)

    assert outcome == "waiting_for_credentials" and broker.credentials_seen == []
    assert untroubled(row) == UNTROUBLED and row["lease_token"] is None
    assert [e for e in logs if "alert" in e or e["log_level"] in ("warning", "error")] == []
    assert await lease_one(schedule, connection) is None
    async with pool.acquire() as conn:
        await set_broker_credentials(conn, vault, connection.created.connection_id, NEW_LOGIN)
    again = await lease_one(schedule, connection)
    assert again is not None and await sync.run(again) == "synced"


async def until_finished_or_blocked_by(
    pool: asyncpg.Pool, task: asyncio.Task[Any], blocker_pid: int
) -> None:
    """Until `task` is done, or some backend waits on a lock that backend `blocker_pid` holds."""
    for _ in range(1000):
        if task.done() or await pool.fetchval(
            "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE $1 = ANY(pg_blocking_pids(pid)))",
            blocker_pid,
        ):
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the poll neither finished nor waited on the storing transaction")


@pytest.mark.parametrize(
    ("meanwhile", "first_outcome"),
    [
        ("the_broker_refuses_the_old_credential", "credentials_rejected"),
        ("the_old_credential_is_revoked", "waiting_for_credentials"),
    ],
)
async def test_a_credential_stored_while_a_poll_runs_readmits_the_connection_whatever_it_recorded(
    pool: asyncpg.Pool, vault: CredentialVault, meanwhile: str, first_outcome: str
) -> None:
    connection = await polled(pool, vault)
    connection_id = connection.created.connection_id
    broker = ScriptedBroker(pages=[page(1)])
    if meanwhile == "the_broker_refuses_the_old_credential":
        broker.failure = CredentialsRejected(401, "invalid token")
    schedule = SyncSchedule(pool, "replica", 60)
    sync = syncer(pool, vault, schedule, broker, RecordingSink())
    due = await lease_one(schedule, connection)
    assert due is not None
    if meanwhile == "the_old_credential_is_revoked":
        await pool.execute(
            "UPDATE mt5_credentials SET revoked_at = now() WHERE connection_id = $1",
            connection_id,
        )

    # `set-credentials` begins before the poll records anything (its row's created_at, now(),
    # is that start) and commits only after the poll has recorded its outcome, or is waiting
    # on this transaction's locks to record it.
    async with pool.acquire() as storing:
        transaction = storing.transaction()
        await transaction.start()
        try:
            await set_broker_credentials(storing, vault, connection_id, NEW_LOGIN)
            poll = asyncio.create_task(sync.run(due))
            await until_finished_or_blocked_by(pool, poll, storing.get_server_pid())
        except BaseException:
            await transaction.rollback()
            raise
        await transaction.commit()
    recorded = await poll

    broker.failure = None
    await make_due(pool, connection)
    again = await lease_one(schedule, connection)
    assert again is not None, f"the stored credential was ignored after {recorded}"
    assert await sync.run(again) == "synced"
    assert recorded == first_outcome
    assert b"a new one" in broker.credentials_seen[-1]
    rotation_marks = await pool.fetch(
        "SELECT revoked_at IS NULL AS active, rotation_forced_reason FROM mt5_credentials"
        " WHERE connection_id = $1 AND kind = $2 ORDER BY created_at",
        connection_id,
        credential_kinds.BROKER_CREDENTIALS,
    )
    # The new credential, never refused, is not marked for rotation.
    assert [tuple(r) for r in rotation_marks][-1] == (True, None)


async def test_a_live_connection_syncs_only_after_a_demo_sync_of_its_broker(
    pool: asyncpg.Pool, vault: CredentialVault
) -> None:
    async with pool.acquire() as conn:
        demo = await new_connection(conn, vault)
        live_login = 95_000_000 + uuid.uuid4().int % 10**6
        live = await connect_account(conn, vault, demo.user_id, live_login)
        await conn.execute(
            "UPDATE mt5_connections SET connection_type = 'live' WHERE id = $1",
            live.created.connection_id,
        )
    await polled(pool, vault, live)
    schedule = SyncSchedule(pool, "replica", 60)
    assert await lease_one(schedule, live) is None
    async with pool.acquire() as conn:
        with pytest.raises(ConnectionRefused, match="no mt5 demo connection that has synced"):
            await enable_live(conn, live.created.connection_id)

    await polled(pool, vault, demo)
    demo_due = await lease_one(schedule, demo)
    assert demo_due is not None
    sync = syncer(pool, vault, schedule, ScriptedBroker(), RecordingSink())
    assert await sync.run(demo_due) == "synced"
    async with pool.acquire() as conn:
        enabled_at = await enable_live(conn, live.created.connection_id)
        assert await enable_live(conn, live.created.connection_id) == enabled_at  # idempotent
    assert await lease_one(schedule, live) is not None


class SignallingSink(RecordingSink):
    def __init__(self) -> None:
        super().__init__()
        self.first_published = asyncio.Event()

    async def publish(self, event: Any) -> None:
        await super().publish(event)
        self.first_published.set()


async def steal_lease(pool: asyncpg.Pool, connection: TestConnection) -> None:
    """Another replica takes the connection over (as after this one's lease ran out)."""
    await pool.execute(
        "UPDATE sync_schedule SET lease_owner = 'thief', lease_token = gen_random_uuid(),"
        " lease_until = now() + interval '5 minutes' WHERE connection_id = $1",
        connection.created.connection_id,
    )


def syncs_counted(outcome: str) -> float:
    return (
        REGISTRY.get_sample_value(
            "poscal_poller_syncs_total", {"broker": "mt5", "outcome": outcome}
        )
        or 0.0
    )


async def test_a_replica_that_leases_a_connection_again_cannot_write_with_its_old_lease(
    pool: asyncpg.Pool, vault: CredentialVault
) -> None:
    connection = await polled(pool, vault)
    schedule = SyncSchedule(pool, "one-replica", 60)
    old = await lease_one(schedule, connection)
    assert old is not None
    await pool.execute(
        "UPDATE sync_schedule SET lease_until = now() - interval '1 second'"
        " WHERE connection_id = $1",
        connection.created.connection_id,
    )
    new = await lease_one(schedule, connection)  # the same owner, a new lease
    assert new is not None and new.lease_token != old.lease_token

    for write in (
        schedule.save_cursor(old.lease, "999"),
        schedule.renew(old.lease),
        schedule.succeeded(old.lease, 0.5),
        schedule.failed(old.lease, "late", 30, 3),
        schedule.credentials_rejected(old.lease, uuid.uuid4(), "late"),
        schedule.told_to_wait(old.lease, 30, "late"),
        schedule.postpone(old.lease, 30),
    ):
        with pytest.raises(LeaseLost):
            await write
    row = await schedule_row(pool, connection)
    assert (row["cursor"], row["consecutive_failures"], row["last_error"]) == (None, 0, None)
    assert row["lease_token"] == new.lease_token and row["lease_owner"] == "one-replica"
    assert await schedule.save_cursor(new.lease, "100") == "100"


async def test_a_numeric_cursor_never_moves_back_and_other_cursors_are_taken_as_given(
    pool: asyncpg.Pool, vault: CredentialVault
) -> None:
    connection = await polled(pool, vault)
    schedule = SyncSchedule(pool, "replica", 60)
    due = await lease_one(schedule, connection)
    assert due is not None
    assert await schedule.save_cursor(due.lease, "900") == "900"
    assert await schedule.save_cursor(due.lease, "200") == "900"
    assert await schedule.save_cursor(due.lease, "1000") == "1000"  # as numbers, not as text
    assert await schedule.save_cursor(due.lease, "2024-05-01;10:00:00") == "2024-05-01;10:00:00"
    assert await schedule.save_cursor(due.lease, "2023-01-01;00:00:00") == "2023-01-01;00:00:00"
    assert (await schedule_row(pool, connection))["cursor"] == "2023-01-01;00:00:00"


async def test_a_sync_longer_than_its_lease_keeps_the_lease_by_heartbeat(
    pool: asyncpg.Pool, vault: CredentialVault
) -> None:
    connection = await polled(pool, vault)
    broker, sink = ScriptedBroker(pages=[page(1)], gate=asyncio.Event()), RecordingSink()
    schedule = SyncSchedule(pool, "replica", lease_seconds=3)
    due = await lease_one(schedule, connection)
    assert due is not None
    leased_until = (await schedule_row(pool, connection))["lease_until"]
    running = asyncio.create_task(syncer(pool, vault, schedule, broker, sink).run(due))
    await asyncio.wait_for(broker.asked.wait(), 10)  # under way, and held there by the broker
    await until_the_database_clock_passes(pool, leased_until)

    # The lease it was given has run out: only its renewals can still hold it.
    assert await lease_one(SyncSchedule(pool, "rescuer", 60), connection) is None
    assert (await schedule_row(pool, connection))["lease_until"] > leased_until
    assert not running.done()
    assert broker.gate is not None
    broker.gate.set()
    assert await running == "synced"
    assert (await schedule_row(pool, connection))["cursor"] == "100"


async def test_a_sync_whose_lease_is_taken_over_stops_without_writing_anything_more(
    pool: asyncpg.Pool, vault: CredentialVault
) -> None:
    connection = await polled(pool, vault)
    broker = ScriptedBroker(pages=[page(1), page(2)], stall_after=1)
    sink = SignallingSink()
    schedule = SyncSchedule(pool, "replica", lease_seconds=1.5)
    due = await lease_one(schedule, connection)
    assert due is not None
    lost_before = syncs_counted("lease_lost")
    running = asyncio.create_task(syncer(pool, vault, schedule, broker, sink).run(due))
    await asyncio.wait_for(sink.first_published.wait(), timeout=10)
    await steal_lease(pool, connection)

    assert await asyncio.wait_for(running, timeout=10) == "lease_lost"
    assert [e.delivery_id for e in sink.published] == ["scripted:page:1"]
    row = await schedule_row(pool, connection)
    assert (row["cursor"], row["consecutive_failures"], row["last_error"]) == ("100", 0, None)
    assert row["lease_owner"] == "thief" and row["last_success_at"] is None
    assert syncs_counted("lease_lost") == lost_before + 1


@pytest.mark.parametrize(
    "failure",
    [
        None,
        CredentialsRejected(401, "invalid token"),
        BrokerUnavailable("HTTP 503"),
        BrokerUnavailable("HTTP 429", retry_after=900),
    ],
    ids=["succeeded", "credentials_rejected", "failed", "told_to_wait"],
)
async def test_an_outcome_found_to_have_lost_the_lease_is_reported_not_written(
    pool: asyncpg.Pool, vault: CredentialVault, failure: Exception | None
) -> None:
    connection = await polled(pool, vault)
    schedule = SyncSchedule(pool, "replica", 60)
    sync = syncer(pool, vault, schedule, ScriptedBroker(failure=failure), RecordingSink())
    due = await lease_one(schedule, connection)
    assert due is not None
    await steal_lease(pool, connection)

    assert await sync.run(due) == "lease_lost"
    row = await schedule_row(pool, connection)
    # Syncing still: the lease's new holder ends the sync.
    assert (row["status"], row["consecutive_failures"], row["last_error"]) == ("syncing", 0, None)
    assert row["credentials_rejected_at"] is None and row["last_success_at"] is None


async def test_a_poller_never_starts_a_second_sync_of_a_connection_it_is_syncing(
    pool: asyncpg.Pool, vault: CredentialVault
) -> None:
    connection = await polled(pool, vault)
    schedule = SyncSchedule(pool, "replica", 60)
    release, running = asyncio.Event(), asyncio.Event()
    started: list[uuid.UUID] = []

    async def sync(due: DueSync) -> str:
        if due.connection.connection_id != connection.created.connection_id:
            await schedule.postpone(due.lease, 600)  # another test's leftover
            return "skipped"
        started.append(due.connection.connection_id)
        running.set()
        await release.wait()
        return "synced"

    poller = Poller(schedule, sync, concurrency=1000, tick_seconds=1)
    await poller.tick()
    await asyncio.wait_for(running.wait(), 10)
    # Its lease runs out while it still runs (a stalled heartbeat): due and free again.
    await pool.execute(
        "UPDATE sync_schedule SET lease_until = now() - interval '1 second',"
        " next_sync_at = now() - interval '1 second' WHERE connection_id = $1",
        connection.created.connection_id,
    )
    await poller.tick()
    release.set()
    await poller.drain()  # every sync it started has run: a second one of it would be in `started`
    assert started == [connection.created.connection_id]


async def test_a_locked_webhook_does_not_stop_polling_and_stays_locked(
    pool: asyncpg.Pool, vault: CredentialVault
) -> None:
    connection = await polled(pool, vault)
    await pool.execute(
        "UPDATE mt5_connections SET lifecycle = 'locked', locked_at = now(),"
        " last_error = 'webhook locked' WHERE id = $1",
        connection.created.connection_id,
    )
    schedule = SyncSchedule(pool, "replica", 60)
    broker = ScriptedBroker(pages=[page(1)])
    due = await lease_one(schedule, connection)
    assert due is not None
    assert await syncer(pool, vault, schedule, broker, RecordingSink()).run(due) == "synced"
    row = await schedule_row(pool, connection)
    assert (row["cursor"], row["lifecycle"], row["status"], row["connection_error"]) == (
        "100",
        "locked",
        "idle",
        "webhook locked",
    )


async def test_one_users_connections_are_leased_at_most_at_the_users_limit_across_replicas(
    pool: asyncpg.Pool, vault: CredentialVault
) -> None:
    async with pool.acquire() as conn:
        first = await new_connection(conn, vault)
        others = [
            await connect_account(conn, vault, first.user_id, 96_000_000 + uuid.uuid4().int % 10**6)
            for _ in range(3)
        ]
    mine = set()
    for connection in (first, *others):
        await polled(pool, vault, connection)
        mine.add(connection.created.connection_id)
    limit = UserSyncLimit(amount=2, window_seconds=60)
    replicas = [SyncSchedule(pool, f"replica-{n}", 60, user_limit=limit) for n in "ab"]

    async def lease_from_both() -> set[uuid.UUID]:
        leased = await asyncio.gather(*(replica.lease_due(1000) for replica in replicas))
        ids = {due.connection.connection_id for dues in leased for due in dues}
        for dues, replica in zip(leased, replicas, strict=True):
            for due in dues:  # due again at once: only the limit holds them back
                await replica.postpone(due.lease, 0)
        return ids & mine

    assert len(await lease_from_both()) == 2
    assert await lease_from_both() == set()  # the window has not passed

    await pool.execute(
        "UPDATE sync_schedule SET last_attempt_at = last_attempt_at - interval '61 seconds'"
        " WHERE connection_id = ANY($1::uuid[])",
        list(mine),
    )
    assert len(await lease_from_both()) == 2
