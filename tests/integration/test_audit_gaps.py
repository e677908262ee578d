"""What the audit says about attempts it may not have: against the real Postgres, a queue that
overflowed is written down as a gap with its exact count and window; an instance whose lock
session is gone is found lost (once, however many replicas look) and, if it was only cut off,
resolves its own gap when it takes its lock back."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from services.ingest.audit import Attempt, AuditTrail
from services.ingest.client_refusals import ClientRefusals
from services.ingest.instances import LOCK_NAMESPACE, IngestInstance
from services.ingest.retention import Retention

pytestmark = pytest.mark.integration


def _attempt(agent: str, at: datetime) -> Attempt:
    return Attempt(
        broker="mt5",
        received_at=at,
        client_ip="203.0.113.9",
        user_agent=agent,
        status_code=401,
        reason="unknown_connection",
    )


async def _gaps(pool: asyncpg.Pool, instance_id: uuid.UUID) -> list[asyncpg.Record]:
    return list(
        await pool.fetch("SELECT * FROM webhook_audit_gaps WHERE instance_id = $1", instance_id)
    )


async def _progress(pool: asyncpg.Pool, instance: IngestInstance) -> datetime:
    value: datetime = await pool.fetchval(
        "SELECT flushed_through FROM ingest_instances WHERE instance_id = $1",
        instance.instance_id,
    )
    return value


@pytest.fixture
async def instances(database_url: str, pool: asyncpg.Pool) -> AsyncIterator[list[IngestInstance]]:
    """Registered instances the test makes; each stopped afterwards."""
    made: list[IngestInstance] = []
    yield made
    for instance in made:
        await instance.stop(clean=True)


async def _registered(
    database_url: str, pool: asyncpg.Pool, instances: list[IngestInstance]
) -> IngestInstance:
    instance = IngestInstance(database_url, pool, check_every_seconds=3600)
    await instance.register()
    instances.append(instance)
    return instance


async def _set_progress_an_hour_back(pool: asyncpg.Pool, instance: IngestInstance) -> None:
    """As if the instance had flushed nothing for an hour: any flush now moves its progress."""
    await pool.execute(
        "UPDATE ingest_instances SET flushed_through = now() - interval '1 hour'"
        " WHERE instance_id = $1",
        instance.instance_id,
    )


async def test_attempts_dropped_from_a_full_queue_are_written_down_as_a_gap_with_their_count(
    pool: asyncpg.Pool,
) -> None:
    agent = f"overflow-{uuid.uuid4().hex[:8]}"
    trail = AuditTrail(pool, max_queued=2)
    start = datetime.now(UTC)
    times = [start + timedelta(seconds=i) for i in range(5)]
    for at in times:
        trail.record(_attempt(agent, at))
    assert not trail.all_recorded()

    await trail.flush()

    written = await pool.fetch(
        "SELECT received_at FROM webhook_attempts WHERE user_agent = $1", agent
    )
    assert sorted(r["received_at"] for r in written) == times[:2]
    [gap] = await _gaps(pool, trail.instance_id)
    assert (gap["reason"], gap["unrecorded"]) == ("queue_overflow", 3)
    assert (gap["window_start"], gap["window_end"]) == (times[2], times[4])
    assert trail.all_recorded()


async def test_a_flush_moves_the_instance_progress_up_to_the_oldest_request_in_flight(
    database_url: str, pool: asyncpg.Pool, instances: list[IngestInstance]
) -> None:
    instance = await _registered(database_url, pool, instances)
    await _set_progress_an_hour_back(pool, instance)
    in_flight = [time.time() - 600]  # a request still being answered began ten minutes ago
    trail = AuditTrail(
        pool,
        instance_id=instance.instance_id,
        oldest_in_flight=lambda: in_flight[0] if in_flight else None,
    )

    agent = f"progress-{uuid.uuid4().hex[:8]}"
    trail.record(_attempt(agent, datetime.now(UTC)))
    await trail.flush()
    # Not past that request: its attempt is not queued yet.
    assert await _progress(pool, instance) == datetime.fromtimestamp(in_flight[0], UTC)

    in_flight.clear()
    flushed_at = datetime.now(UTC)
    trail.record(_attempt(agent, flushed_at))
    await trail.flush()
    assert await _progress(pool, instance) >= flushed_at


async def test_a_window_of_folded_refusals_holds_the_progress_back_and_is_written_when_it_ends(
    database_url: str, pool: asyncpg.Pool, instances: list[IngestInstance]
) -> None:
    instance = await _registered(database_url, pool, instances)
    await _set_progress_an_hour_back(pool, instance)
    clock = [1000.0]
    refusals = ClientRefusals("1/hour", fold_seconds=60, clock=lambda: clock[0])
    trail = AuditTrail(pool, instance_id=instance.instance_id, held=refusals)
    agent = f"folded-{uuid.uuid4().hex[:8]}"
    start = datetime.now(UTC) - timedelta(seconds=30)
    for n in range(5):  # one within budget, the first of the window, then three folded
        attempt = _attempt(agent, start + timedelta(seconds=n))
        if refusals.refused("203.0.113.9", attempt):
            trail.record(attempt)

    await trail.flush()
    # The folded three are in no row yet: a death now must leave them inside its gap.
    assert await _progress(pool, instance) == start + timedelta(seconds=2)

    clock[0] += 60  # the window ends, and no request comes to close it
    ended_at = datetime.now(UTC)
    await trail.flush()  # what the audit loop does every POSCAL_AUDIT_FLUSH_SECONDS
    written = await pool.fetch(
        "SELECT attempts FROM webhook_attempts WHERE user_agent = $1 ORDER BY id", agent
    )
    assert [r["attempts"] for r in written] == [1, 1, 3]
    assert await _progress(pool, instance) >= ended_at
    assert trail.all_recorded()


async def test_an_instance_whose_lock_session_is_cut_is_found_lost_then_resolves_its_gap(
    database_url: str, pool: asyncpg.Pool, instances: list[IngestInstance]
) -> None:
    cut_off = await _registered(database_url, pool, instances)
    checker = await _registered(database_url, pool, instances)
    backend = await pool.fetchval(
        "SELECT l.pid FROM pg_locks l JOIN ingest_instances i ON l.objid = i.lock_key::oid"
        " WHERE l.locktype = 'advisory' AND l.classid = $2::oid AND l.objsubid = 2"
        " AND l.granted AND i.instance_id = $1",
        cut_off.instance_id,
        LOCK_NAMESPACE,
    )
    assert await pool.fetchval("SELECT pg_terminate_backend($1)", backend)

    for _ in range(200):  # until Postgres has let the session's lock go
        found = await checker.find_lost()
        if any(gap.instance_id == cut_off.instance_id for gap in found):
            break
        await asyncio.sleep(0.05)
    [gap] = await _gaps(pool, cut_off.instance_id)
    assert (gap["reason"], gap["resolved_at"]) == ("instance_lost", None)

    cut_off.start()  # it notices its session is gone, takes its lock back, and says so
    for _ in range(200):
        [gap] = await _gaps(pool, cut_off.instance_id)
        if gap["resolved_at"] is not None:
            break
        await asyncio.sleep(0.05)
    assert gap["resolution"] == "instance_resumed"
    state = await pool.fetchval(
        "SELECT state FROM ingest_instances WHERE instance_id = $1", cut_off.instance_id
    )
    assert state == "running"
    assert cut_off.instance_id not in {g.instance_id for g in await checker.find_lost()}


async def test_replicas_checking_at_once_record_one_gap_per_dead_instance(
    database_url: str, pool: asyncpg.Pool, instances: list[IngestInstance]
) -> None:
    dead = IngestInstance(database_url, pool)
    await dead.register()
    await dead.stop(clean=False)  # its session closes: as after kill -9
    checkers = [await _registered(database_url, pool, instances) for _ in range(3)]
    for _ in range(200):
        await asyncio.gather(*(checker.find_lost() for checker in checkers))
        if await _gaps(pool, dead.instance_id):
            break
        await asyncio.sleep(0.05)
    await asyncio.gather(*(checker.find_lost() for checker in checkers))
    assert len(await _gaps(pool, dead.instance_id)) == 1


async def test_gaps_and_ended_instances_are_forgotten_with_the_attempts_they_speak_of(
    pool: asyncpg.Pool,
) -> None:
    old, recent = uuid.uuid4(), uuid.uuid4()
    for instance_id, age in [(old, timedelta(days=91)), (recent, timedelta(days=89))]:
        await pool.execute(
            "INSERT INTO ingest_instances (instance_id, host, pid, state, lost_at)"
            " VALUES ($1, 'gone', 1, 'lost', now() - $2::interval)",
            instance_id,
            age,
        )
        await pool.execute(
            "INSERT INTO webhook_audit_gaps (instance_id, reason, window_start, window_end,"
            " detected_by) VALUES ($1, 'instance_lost', now() - $2::interval,"
            " now() - $2::interval, $1)",
            instance_id,
            age,
        )
    await Retention(pool, timedelta(days=7), timedelta(days=90)).prune_once()
    kept = await pool.fetch(
        "SELECT instance_id FROM ingest_instances WHERE instance_id = ANY($1::uuid[])",
        [old, recent],
    )
    assert [r["instance_id"] for r in kept] == [recent]
    assert await _gaps(pool, old) == []
    assert len(await _gaps(pool, recent)) == 1
