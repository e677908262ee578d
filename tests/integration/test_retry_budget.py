"""No partition waits behind one record longer than a real outage's retry budget: a record that
keeps failing "transiently" while the infrastructure answers is dead-lettered once the budget is
spent, and the records behind it go on; during a real outage nothing is ever dead-lettered."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence

import asyncpg
import pytest
from aiokafka import ConsumerRecord

from services.devstack.demo import encode_body
from services.normalizer.pipeline import normalize
from services.shared.backoff import Backoff
from services.shared.consuming import RetryBudget, consume_batches
from services.shared.dead_letters import DeadLetter, DeadLetterBudget, DeadLetterPublisher
from services.shared.errors import TransientError
from services.shared.kafka import create_consumer, create_producer
from services.shared.settings import Topics
from services.shared.vault import CredentialVault
from services.writer.pipeline import Writer
from services.writer.repository import JournalRepository
from tests.support.builders import fixture_deals, mt5_body, new_connection, raw_event
from tests.support.kafka import committed_offset, read_topic

pytestmark = pytest.mark.integration

QUICK = Backoff(base_seconds=0.001, cap_seconds=0.01)


async def eventually(check: Callable[[], Awaitable[bool]], what: str, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {seconds}s: {what}")
        await asyncio.sleep(0.02)


async def test_a_record_the_database_keeps_refusing_while_up_is_dead_lettered_after_the_budget(
    kafka_bootstrap: str, pool: asyncpg.Pool, vault: CredentialVault, topics: Topics
) -> None:
    async with pool.acquire() as conn:
        before, stuck, after = [await new_connection(conn, vault) for _ in range(3)]
    events = [
        normalize(raw_event(t, encode_body(mt5_body(t.login, fixture_deals())))).batch
        for t in (before, stuck, after)
    ]
    # Every write of the stuck tenant's fills fails as a lock timeout would: "transient".
    name = f"refuse_{uuid.uuid4().hex[:8]}"
    await pool.execute(
        f"CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
        " RAISE EXCEPTION 'could not obtain lock' USING ERRCODE = 'lock_not_available';"
        " END $$;"
        f"CREATE TRIGGER {name} BEFORE INSERT ON broker_fills FOR EACH ROW"
        f" WHEN (NEW.connection_id = '{stuck.created.connection_id}') EXECUTE FUNCTION {name}()"
    )
    group = f"budget-{topics.canonical}"
    producer = create_producer(kafka_bootstrap, "test-budget")
    consumer = create_consumer(kafka_bootstrap, topics.canonical, group, "t", 2000, 20)
    await asyncio.gather(producer.start(), consumer.start())
    stop = asyncio.Event()
    try:
        for event in events:  # one partition: the stuck record is between the other two
            await producer.send_and_wait(
                topics.canonical, event.model_dump_json().encode(), key=b"one-partition"
            )
        writer = Writer(
            pool,
            JournalRepository(),
            DeadLetterPublisher(producer, topics.dead_letter, "writer", DeadLetterBudget(100)),
            group,
        )
        loop = asyncio.create_task(
            consume_batches(
                consumer,
                writer,
                stop,
                max_records=10,
                backoff=QUICK,
                retry_budget=RetryBudget(attempts=3, seconds=0),
            )
        )
        await eventually(
            lambda: committed_offset_is(kafka_bootstrap, group, topics.canonical, 3),
            "all three records committed",
        )
        stop.set()
        await loop
    finally:
        stop.set()
        await asyncio.gather(consumer.stop(), producer.stop())
        await pool.execute(f"DROP TRIGGER {name} ON broker_fills; DROP FUNCTION {name}()")
    [letter] = [
        DeadLetter.model_validate_json(r.value)
        for r in await read_topic(kafka_bootstrap, topics.dead_letter, expect=1)
    ]
    assert (letter.reason_code, letter.offset) == ("retry_budget_exhausted", 1)
    assert "LockNotAvailableError" in letter.reason
    synced = await pool.fetch(
        "SELECT connection_id FROM sync_events WHERE event_id = ANY($1::uuid[])",
        [e.event_id for e in events],
    )
    assert {r["connection_id"] for r in synced} == {
        before.created.connection_id,
        after.created.connection_id,
    }


async def committed_offset_is(bootstrap: str, group: str, topic: str, expected: int) -> bool:
    return await committed_offset(bootstrap, group, topic) == expected


class Outage:
    """A handler whose infrastructure is down until the test brings it back."""

    def __init__(self) -> None:
        self.down = True
        self.failures = 0
        self.handled: list[int] = []
        self.given_up: list[int] = []

    async def handle(self, records: Sequence[ConsumerRecord]) -> None:
        if self.down:
            self.failures += 1
            raise TransientError("database unreachable")
        self.handled += [r.offset for r in records]

    async def healthy(self) -> bool:
        return not self.down

    async def give_up(self, record: ConsumerRecord, reason: str) -> None:
        self.given_up.append(record.offset)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def test_during_a_real_outage_nothing_is_dead_lettered_however_long_it_lasts(
    kafka_bootstrap: str, topics: Topics
) -> None:
    group = f"outage-{topics.raw}"
    producer = create_producer(kafka_bootstrap, "test-outage")
    consumer = create_consumer(kafka_bootstrap, topics.raw, group, "t", 2000, 20)
    await asyncio.gather(producer.start(), consumer.start())
    handler, clock, stop = Outage(), Clock(), asyncio.Event()
    try:
        for n in range(3):
            await producer.send_and_wait(topics.raw, f"record {n}".encode(), key=b"k")
        loop = asyncio.create_task(
            consume_batches(
                consumer,
                handler,
                stop,
                max_records=10,
                backoff=QUICK,
                retry_budget=RetryBudget(attempts=2, seconds=60),
                clock=clock,
            )
        )

        async def failed_often() -> bool:
            clock.now += 30  # the outage lasts far past the budget
            return handler.failures >= 10

        await eventually(failed_often, "ten failures during the outage")
        handler.down = False

        async def all_handled() -> bool:
            return len(handler.handled) == 3

        await eventually(all_handled, "every record handled once the database is back")
        stop.set()
        await loop
    finally:
        stop.set()
        await asyncio.gather(consumer.stop(), producer.stop())
    assert handler.given_up == []
    assert sorted(handler.handled) == [0, 1, 2]
