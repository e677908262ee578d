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
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

from services.devstack.demo import encode_body
from services.normalizer.pipeline import normalize
from services.shared.backoff import Backoff
from services.shared.consuming import BatchHandler, RetryBudget, consume_batches
from services.shared.dead_letters import DeadLetter, DeadLetterBudget, DeadLetterPublisher
from services.shared.errors import TransientError
from services.shared.kafka import create_producer
from services.shared.settings import Topics
from services.shared.vault import CredentialVault
from services.writer.pipeline import Writer
from services.writer.repository import JournalRepository
from tests.support.builders import fixture_deals, mt5_body, new_connection, raw_event
from tests.support.kafka import committed_offset, committed_offsets, read_topic
from tests.support.kafka_clients import consuming_clients

pytestmark = pytest.mark.integration

QUICK = Backoff(base_seconds=0.001, cap_seconds=0.01)


def consuming_with_quick_retries(
    consumer: AIOKafkaConsumer,
    handler: BatchHandler,
    stop: asyncio.Event,
    retry_budget: RetryBudget,
    *,
    max_records: int = 10,
    clock: Callable[[], float] = time.monotonic,
) -> asyncio.Task[None]:
    """The consume loop under test, in the background, its retries a few milliseconds apart so
    that the budget, not the wait, decides what happens."""
    return asyncio.create_task(
        consume_batches(
            consumer,
            handler,
            stop,
            max_records=max_records,
            backoff=QUICK,
            retry_budget=retry_budget,
            clock=clock,
        )
    )


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
    try:
        async with consuming_clients(kafka_bootstrap, topics.canonical, group) as kafka:
            producer, consumer, stop = kafka
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
            loop = consuming_with_quick_retries(
                consumer, writer, stop, RetryBudget(attempts=3, seconds=0)
            )
            await eventually(
                lambda: committed_offset_is(kafka_bootstrap, group, topics.canonical, 3),
                "all three records committed",
            )
            stop.set()
            await loop
    finally:
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
    handler, clock = Outage(), Clock()
    async with consuming_clients(kafka_bootstrap, topics.raw, group) as (producer, consumer, stop):
        for n in range(3):
            await producer.send_and_wait(topics.raw, f"record {n}".encode(), key=b"k")
        loop = consuming_with_quick_retries(
            consumer, handler, stop, RetryBudget(attempts=2, seconds=60), clock=clock
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
    assert handler.given_up == []
    assert sorted(handler.handled) == [0, 1, 2]


class OnePoisonedPartition:
    """A handler whose records of one partition always fail "transiently" (a record there that
    times out every statement, say), and whose dead letters can be made to fail."""

    def __init__(self, poisoned: int) -> None:
        self.poisoned = poisoned
        self.handled: list[tuple[int, int]] = []
        self.given_up: list[tuple[int, int]] = []
        self.dead_letters_fail = False
        self.failures = 0

    async def handle(self, records: Sequence[ConsumerRecord]) -> None:
        if any(r.partition == self.poisoned for r in records):
            self.failures += 1
            raise TransientError("statement timeout")
        self.handled += [(r.partition, r.offset) for r in records]

    async def healthy(self) -> bool:
        return True

    async def give_up(self, record: ConsumerRecord, reason: str) -> None:
        if self.dead_letters_fail:
            raise TransientError("dead letter not acknowledged")
        self.given_up.append((record.partition, record.offset))


async def partition_keys(bootstrap: str, topic: str) -> dict[int, bytes]:
    """A key per partition of `topic`, as the producer's partitioner places them."""
    producer = create_producer(bootstrap, "test-keys")
    await producer.start()
    try:
        partitions = sorted(await producer.partitions_for(topic))
        keys: dict[int, bytes] = {}
        for n in range(1000):
            key = f"key-{n}".encode()
            partition = producer._partitioner(key, partitions, partitions)
            keys.setdefault(partition, key)
            if len(keys) == len(partitions):
                return keys
    finally:
        await producer.stop()
    raise AssertionError("no key for every partition")


async def test_a_failing_partition_holds_up_no_other_partition(
    kafka_bootstrap: str, topics: Topics
) -> None:
    keys = await partition_keys(kafka_bootstrap, topics.raw)
    poisoned, *healthy_partitions = sorted(keys)
    group = f"poisoned-{topics.raw}"
    handler = OnePoisonedPartition(poisoned)
    async with consuming_clients(kafka_bootstrap, topics.raw, group) as (producer, consumer, stop):
        for n in range(5):
            for partition in sorted(keys):
                await producer.send_and_wait(topics.raw, f"{n}".encode(), key=keys[partition])
        never_spent = RetryBudget(attempts=10**6, seconds=10**6)
        loop = consuming_with_quick_retries(consumer, handler, stop, never_spent, max_records=100)

        async def others_done() -> bool:
            return len(handler.handled) == 5 * len(healthy_partitions)

        await eventually(others_done, "every other partition's records handled")

        async def others_committed() -> bool:
            offsets = await committed_offsets(kafka_bootstrap, group, topics.raw)
            return all(offsets.get(TopicPartition(topics.raw, p)) == 5 for p in healthy_partitions)

        await eventually(others_committed, "every other partition committed")

        async def retried() -> bool:
            return handler.failures >= 5

        await eventually(retried, "the poisoned partition retried meanwhile")
        stop.set()
        await loop
    assert all(p != poisoned for p, _ in handler.handled)
    committed = await committed_offsets(kafka_bootstrap, group, topics.raw)
    assert committed.get(TopicPartition(topics.raw, poisoned), 0) == 0


async def test_a_record_whose_dead_letter_cannot_be_sent_is_kept_for_later_not_lost(
    kafka_bootstrap: str, topics: Topics
) -> None:
    group = f"undeliverable-{topics.raw}"
    handler = OnePoisonedPartition(poisoned=-1)
    async with consuming_clients(kafka_bootstrap, topics.raw, group) as (producer, consumer, stop):
        await producer.send_and_wait(topics.raw, b"poison", key=b"k")
        [record] = await read_topic(kafka_bootstrap, topics.raw, expect=1)
        handler.poisoned = record.partition
        handler.dead_letters_fail = True
        loop = consuming_with_quick_retries(
            consumer, handler, stop, RetryBudget(attempts=2, seconds=0)
        )

        async def tried_often() -> bool:
            return handler.failures >= 6  # several give-ups attempted, none could be sent

        await eventually(tried_often, "give-ups attempted while dead letters fail")
        assert not loop.done()  # the loop lives on: the failure is an outage, not a crash
        handler.dead_letters_fail = False

        async def given_up() -> bool:
            return handler.given_up == [(record.partition, record.offset)]

        await eventually(given_up, "the record dead-lettered once letters go through")
        await eventually(
            lambda: committed_offset_is(kafka_bootstrap, group, topics.raw, 1), "committed"
        )
        stop.set()
        await loop
