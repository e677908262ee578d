"""Normalizer and writer against the real broker and database: events become journal rows,
bad input is dead-lettered with its reason without blocking, and offsets are committed only
after the database has committed."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Sequence
from decimal import Decimal

import asyncpg
import pytest
from aiokafka import ConsumerRecord
from structlog.testing import capture_logs

from services.devstack.demo import encode_body
from services.normalizer.pipeline import Normalizer, normalize
from services.shared.canonical import CanonicalBatch
from services.shared.consuming import BatchHandler, consume_batches
from services.shared.database import Connection, create_pool
from services.shared.dead_letters import (
    MAX_DEAD_LETTER_BYTES,
    DeadLetter,
    DeadLetterBudget,
    DeadLetterBudgetExceeded,
    DeadLetterPublisher,
)
from services.shared.kafka import create_consumer, create_producer
from services.shared.settings import Topics
from services.shared.vault import CredentialVault
from services.writer.failures import StopWriting
from services.writer.pipeline import Writer
from services.writer.repository import EventOutcome, JournalRepository
from tests.support.builders import (
    TestConnection,
    fixture_deals,
    mt5_body,
    new_connection,
    raw_event,
)
from tests.support.kafka import committed_offset, read_topic
from tests.support.pipeline import running_pipeline

pytestmark = pytest.mark.integration


async def _journal(pool: asyncpg.Pool, connection: TestConnection) -> list[asyncpg.Record]:
    return await pool.fetch(
        "SELECT * FROM trading_journal WHERE connection_id = $1 ORDER BY mt5_trade_id",
        connection.created.connection_id,
    )


async def _wait_for_journal(
    pool: asyncpg.Pool, connection: TestConnection, status: str, wait_seconds: float = 15
) -> list[asyncpg.Record]:
    deadline = time.monotonic() + wait_seconds
    while time.monotonic() < deadline:
        rows = await _journal(pool, connection)
        if rows and all(r["status"] == status for r in rows):
            return rows
        await asyncio.sleep(0.05)
    raise AssertionError(f"no {status} journal row within {wait_seconds}s")


async def test_a_raw_event_becomes_a_journal_row(
    kafka_bootstrap: str, pool: asyncpg.Pool, topics: Topics, connection: TestConnection
) -> None:
    body = encode_body(mt5_body(connection.login, fixture_deals(), balance="1069.44"))
    async with running_pipeline(kafka_bootstrap, pool, topics) as pipeline:
        await pipeline.send_raw(raw_event(connection, body))
        [row] = await _wait_for_journal(pool, connection, "closed")
    assert row["profit"] == 75 and row["exit_price"] == Decimal("1.0875")
    balance = await pool.fetchval(
        "SELECT current_balance FROM trading_accounts WHERE id = $1", connection.created.account_id
    )
    assert str(balance) == "1069.44"


async def test_an_invalid_event_is_dead_lettered_with_its_reason_and_the_partition_moves_on(
    kafka_bootstrap: str, pool: asyncpg.Pool, topics: Topics, connection: TestConnection
) -> None:
    body = encode_body(mt5_body(connection.login, fixture_deals()))
    async with running_pipeline(kafka_bootstrap, pool, topics) as pipeline:
        await pipeline.send_bytes(
            b"not an envelope", key=str(connection.created.connection_id).encode()
        )
        await pipeline.send_raw(raw_event(connection, b'{"account": "truncated'))
        await pipeline.send_raw(raw_event(connection, body))
        await _wait_for_journal(pool, connection, "closed")
        await pipeline.caught_up()
    letters = [
        DeadLetter.model_validate_json(r.value)
        for r in await read_topic(kafka_bootstrap, topics.dead_letter, expect=2)
    ]
    assert sorted(letter.reason_code for letter in letters) == [
        "invalid_envelope",
        "malformed_json",
    ]
    envelope_letter = next(x for x in letters if x.reason_code == "invalid_envelope")
    assert envelope_letter.stage == "normalizer"
    assert envelope_letter.topic == topics.raw and envelope_letter.offset >= 0
    assert envelope_letter.value_b64  # the original bytes, so it can be replayed after a fix


async def test_bad_deals_are_one_dead_letter_while_the_valid_deals_beside_them_are_written(
    kafka_bootstrap: str, pool: asyncpg.Pool, topics: Topics, connection: TestConnection
) -> None:
    deals = fixture_deals()
    broken = {**deals[1], "ticket": 999, "volume": "lots"}
    unknown = {**deals[1], "ticket": 998, "type": 99}
    body = encode_body(mt5_body(connection.login, [deals[0], broken, deals[1], unknown, deals[2]]))
    async with running_pipeline(kafka_bootstrap, pool, topics) as pipeline:
        await pipeline.send_raw(raw_event(connection, body))
        [row] = await _wait_for_journal(pool, connection, "closed")
        await pipeline.caught_up()
    assert row["fill_count"] == 3
    [letter] = [
        DeadLetter.model_validate_json(r.value)
        for r in await read_topic(kafka_bootstrap, topics.dead_letter, expect=1)
    ]
    assert letter.reason_code == "rejected_items"
    assert letter.reason == "2 items rejected (3 mapped): invalid_deal x1, unknown_deal_type x1"
    assert [(r.index, r.code, r.item["ticket"]) for r in letter.rejections] == [
        (1, "invalid_deal", 999),
        (3, "unknown_deal_type", 998),
    ]
    assert letter.rejections[0].detail.startswith("volume")


async def test_a_dead_letter_too_large_for_the_broker_is_cut_to_fit_and_the_partition_moves_on(
    kafka_bootstrap: str, pool: asyncpg.Pool, topics: Topics, connection: TestConnection
) -> None:
    deals = fixture_deals()
    # A webhook over ingest's default limit: its raw copy alone is ~60% of a Kafka message.
    bad = [{**deals[0], "ticket": 10_000 + i, "volume": "lots"} for i in range(1300)]
    oversized = raw_event(connection, encode_body(mt5_body(connection.login, bad)))
    after = raw_event(connection, encode_body(mt5_body(connection.login, deals)))
    async with running_pipeline(kafka_bootstrap, pool, topics) as pipeline:
        await pipeline.send_raw(oversized)
        await pipeline.send_raw(after)
        await _wait_for_journal(pool, connection, "closed")
        await pipeline.caught_up()
    [record] = await read_topic(kafka_bootstrap, topics.dead_letter, expect=1)
    letter = DeadLetter.model_validate_json(record.value)
    assert letter.event_id == str(oversized.event_id)
    assert letter.rejections_truncated and letter.rejected_count == 1300
    assert 0 < len(letter.rejections) < 1300
    assert len(record.value) <= MAX_DEAD_LETTER_BYTES


class FailingOnce(JournalRepository):
    """The real repository, but the first transaction fails as if the database went away."""

    def __init__(self) -> None:
        self.calls = 0

    async def apply(
        self, conn: Connection, batches: Sequence[CanonicalBatch]
    ) -> list[EventOutcome]:
        self.calls += 1
        if self.calls == 1:
            raise asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed")
        return await super().apply(conn, batches)


async def test_a_database_outage_is_retried_without_losing_or_doubling_anything(
    kafka_bootstrap: str, pool: asyncpg.Pool, topics: Topics, connection: TestConnection
) -> None:
    repository = FailingOnce()
    body = encode_body(mt5_body(connection.login, fixture_deals()))
    async with running_pipeline(kafka_bootstrap, pool, topics, repository) as pipeline:
        await pipeline.send_raw(raw_event(connection, body))
        [row] = await _wait_for_journal(pool, connection, "closed")
        await pipeline.caught_up()
    assert repository.calls >= 2
    assert row["fill_count"] == 3 and row["profit"] == 75
    fills = await pool.fetchval(
        "SELECT count(*) FROM broker_fills WHERE connection_id = $1",
        connection.created.connection_id,
    )
    assert fills == 3
    assert await read_topic(kafka_bootstrap, topics.dead_letter) == []


class HeldAtCommit(JournalRepository):
    """The real repository, held just before its transaction until the test lets it go."""

    def __init__(self) -> None:
        self.reached = asyncio.Event()
        self.release = asyncio.Event()

    async def apply(
        self, conn: Connection, batches: Sequence[CanonicalBatch]
    ) -> list[EventOutcome]:
        self.reached.set()
        await self.release.wait()
        return await super().apply(conn, batches)


async def test_offsets_are_committed_only_after_the_database_commit(
    kafka_bootstrap: str, pool: asyncpg.Pool, topics: Topics, connection: TestConnection
) -> None:
    repository = HeldAtCommit()
    body = encode_body(mt5_body(connection.login, fixture_deals()))
    async with running_pipeline(kafka_bootstrap, pool, topics, repository) as pipeline:
        await pipeline.send_raw(raw_event(connection, body))
        await asyncio.wait_for(repository.reached.wait(), 15)
        before = await committed_offset(kafka_bootstrap, pipeline.writer_group, topics.canonical)
        repository.release.set()
        await _wait_for_journal(pool, connection, "closed")
        await pipeline.caught_up()
        after = await committed_offset(kafka_bootstrap, pipeline.writer_group, topics.canonical)
    assert before == 0
    assert after == 1


async def test_redelivered_events_in_any_order_leave_the_same_journal(
    kafka_bootstrap: str, pool: asyncpg.Pool, topics: Topics, connection: TestConnection
) -> None:
    deals = fixture_deals()
    events = [raw_event(connection, encode_body(mt5_body(connection.login, [d]))) for d in deals]
    async with running_pipeline(kafka_bootstrap, pool, topics) as pipeline:
        for event in [events[2], events[0], events[2], events[1], events[0]]:
            await pipeline.send_raw(event)
        # Every event through both stages, redeliveries included (the first alone, a close
        # whose opening has not arrived, already reads as a closed row of 60).
        await pipeline.caught_up()
        [after] = await _journal(pool, connection)
    assert (after["status"], after["profit"]) == ("closed", 75)
    assert after["volume"] == Decimal("0.30") and after["fill_count"] == 3
    synced = await pool.fetchval(
        "SELECT count(*) FROM sync_events WHERE connection_id = $1",
        connection.created.connection_id,
    )
    assert synced == 3


async def test_an_event_the_database_refuses_is_dead_lettered_and_the_rest_are_written(
    kafka_bootstrap: str,
    pool: asyncpg.Pool,
    vault: CredentialVault,
    topics: Topics,
    connection: TestConnection,
) -> None:
    async with pool.acquire() as conn:
        removed = await new_connection(conn, vault)
        await conn.execute(
            "DELETE FROM mt5_connections WHERE id = $1", removed.created.connection_id
        )
    orphan = raw_event(removed, encode_body(mt5_body(removed.login, fixture_deals())))
    valid = raw_event(connection, encode_body(mt5_body(connection.login, fixture_deals())))
    async with running_pipeline(kafka_bootstrap, pool, topics) as pipeline:
        await pipeline.send_raw(orphan)
        await pipeline.send_raw(valid)
        await _wait_for_journal(pool, connection, "closed")
        await pipeline.caught_up()  # the orphan may be on another partition than the valid one
    letters = [
        DeadLetter.model_validate_json(r.value)
        for r in await read_topic(kafka_bootstrap, topics.dead_letter, expect=1)
    ]
    assert [(x.stage, x.reason_code, x.event_id) for x in letters] == [
        ("writer", "write_rejected", str(orphan.event_id))
    ]
    assert "ForeignKeyViolation" in letters[0].reason


class RecordingBatches:
    """The real handler, remembering the offsets of each batch the consume loop hands it."""

    def __init__(self, handler: BatchHandler) -> None:
        self._handler = handler
        self.batches: list[list[int]] = []

    async def handle(self, records: Sequence[ConsumerRecord]) -> None:
        self.batches.append([record.offset for record in records])
        await self._handler.handle(records)

    async def healthy(self) -> bool:
        return await self._handler.healthy()

    async def give_up(self, record: ConsumerRecord, reason: str) -> None:
        await self._handler.give_up(record, reason)


async def test_too_many_invalid_messages_in_a_row_stop_the_consumer_without_committing(
    kafka_bootstrap: str, pool: asyncpg.Pool, topics: Topics
) -> None:
    group = f"budget-{topics.raw}"
    producer = create_producer(kafka_bootstrap, "test-budget")
    consumer = create_consumer(kafka_bootstrap, topics.raw, group, "t", 2000)
    await asyncio.gather(producer.start(), consumer.start())
    try:
        for _ in range(3):
            await producer.send_and_wait(topics.raw, b"garbage", key=b"k")
        dead_letters = DeadLetterPublisher(
            producer, topics.dead_letter, "normalizer", DeadLetterBudget(2)
        )
        normalizer = RecordingBatches(Normalizer(producer, topics.canonical, dead_letters, group))
        with pytest.raises(DeadLetterBudgetExceeded):
            await asyncio.wait_for(
                consume_batches(consumer, normalizer, asyncio.Event(), max_records=10), 20
            )
    finally:
        await asyncio.gather(consumer.stop(), producer.stop())
    # However many records each fetch brought, the batch holding the third invalid one (offset
    # 2) went over the budget and is not committed; batches before it were dead-lettered within
    # the budget and are.
    *_, stopped = normalizer.batches
    assert sorted({offset for batch in normalizer.batches for offset in batch}) == [0, 1, 2]
    assert stopped[-1] == 2
    assert await committed_offset(kafka_bootstrap, group, topics.raw) == stopped[0]


async def test_a_writer_the_database_refuses_stops_without_committing_or_dead_lettering(
    kafka_bootstrap: str,
    database_url: str,
    pool: asyncpg.Pool,
    topics: Topics,
    connection: TestConnection,
) -> None:
    # The writer runs as a role of its own with no grants: every write is refused (42501), as
    # after a botched deploy. Dead-lettering would lose every event; retrying would hide it.
    role = f"writer_without_grants_{uuid.uuid4().hex[:8]}"
    group = f"refused-{topics.canonical}"
    canonical = normalize(
        raw_event(connection, encode_body(mt5_body(connection.login, fixture_deals())))
    )
    await pool.execute(f'CREATE ROLE "{role}" NOLOGIN')
    try:
        refused = await create_pool(database_url, max_size=2, server_settings={"role": role})
        producer = create_producer(kafka_bootstrap, "test-refused")
        consumer = create_consumer(kafka_bootstrap, topics.canonical, group, "t", 2000)
        await asyncio.gather(producer.start(), consumer.start())
        try:
            await producer.send_and_wait(
                topics.canonical, canonical.batch.model_dump_json().encode(), key=b"k"
            )
            writer = Writer(
                refused,
                JournalRepository(),
                DeadLetterPublisher(producer, topics.dead_letter, "writer", DeadLetterBudget(100)),
                group,
            )
            with capture_logs() as logs, pytest.raises(StopWriting) as stopped:
                await asyncio.wait_for(
                    consume_batches(consumer, writer, asyncio.Event(), max_records=10), 20
                )
        finally:
            await asyncio.gather(consumer.stop(), producer.stop(), refused.close())
    finally:
        await pool.execute(f'DROP ROLE "{role}"')
    assert stopped.value.sqlstate == "42501"
    assert [(x["log_level"], x["sqlstate"]) for x in logs if "stopping" in x["event"]] == [
        ("error", "42501")
    ]
    # The writer's loop has ended: whatever it was going to commit or dead-letter, it has.
    assert await committed_offset(kafka_bootstrap, group, topics.canonical) == 0
    assert await read_topic(kafka_bootstrap, topics.dead_letter) == []
    assert await _journal(pool, connection) == []
