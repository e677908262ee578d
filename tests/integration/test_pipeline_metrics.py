"""The consumers' metrics against the real database and broker: a written batch counts its
events, new fills and cash movements per broker (a replay counts as one, with no new fills), a
refused event counts a dead letter under the writer's reason, and a partition's lag is the
records after its last commit, however long the batch in hand takes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence

import asyncpg
import pytest
from aiokafka import ConsumerRecord

from services.devstack.demo import encode_body
from services.normalizer.pipeline import normalize
from services.shared.canonical import CanonicalBatch
from services.shared.consumer_metrics import ConsumerMetrics
from services.shared.consuming import consume_batches
from services.shared.dead_letters import DeadLetterBudget, DeadLetterPublisher
from services.shared.settings import Topics
from services.shared.vault import CredentialVault
from services.writer.pipeline import Writer
from services.writer.repository import JournalRepository
from tests.support.builders import deposit_deal, fixture_deals, mt5_body, new_connection, raw_event
from tests.support.kafka_clients import consuming_clients
from tests.support.metrics import sample
from tests.support.producers import FakeProducer
from tests.support.records import consumer_record

pytestmark = pytest.mark.integration


async def events(pool: asyncpg.Pool, vault: CredentialVault, count: int) -> list[CanonicalBatch]:
    batches = []
    async with pool.acquire() as conn:
        for _ in range(count):
            tenant = await new_connection(conn, vault)
            body = encode_body(mt5_body(tenant.login, [*fixture_deals(), deposit_deal(880_001)]))
            batches.append(normalize(raw_event(tenant, body)).batch)
    return batches


def records(values: Sequence[bytes]) -> list[ConsumerRecord]:
    return [
        consumer_record(v, topic="poscal.canonical", offset=offset)
        for offset, v in enumerate(values)
    ]


def written_so_far() -> dict[str, float]:
    return {
        "events": sample("poscal_writer_events_written_total", broker="mt5", replay="false"),
        "replays": sample("poscal_writer_events_written_total", broker="mt5", replay="true"),
        "fills": sample("poscal_writer_fills_written_total", broker="mt5"),
        "cash": sample("poscal_writer_cash_movements_written_total", broker="mt5"),
        "delays": sample("poscal_writer_sync_delay_seconds_count", broker="mt5"),
        "transactions": sample(
            "poscal_writer_transaction_duration_seconds_count", outcome="committed"
        ),
        "batched_events": sample("poscal_writer_batch_events_sum"),
        "letters": sample(
            "poscal_dead_letters_total", stage="writer", reason="invalid_canonical_batch"
        ),
    }


def grown(before: dict[str, float]) -> dict[str, float]:
    return {name: value - before[name] for name, value in written_so_far().items()}


async def test_a_written_batch_counts_its_events_and_new_fills_and_a_replay_no_fills(
    pool: asyncpg.Pool, vault: CredentialVault
) -> None:
    batches = await events(pool, vault, 3)
    fills = sum(len(b.fills) for b in batches)
    cash = sum(len(b.cash_movements) for b in batches)
    assert fills and cash
    values = [b.model_dump_json().encode() for b in batches]
    letters = DeadLetterPublisher(FakeProducer(), "poscal.dead", "writer", DeadLetterBudget(9))
    writer = Writer(pool, JournalRepository(), letters, "poscal-writer")

    before = written_so_far()
    await writer.handle(records([*values, b"no canonical batch"]))
    assert grown(before) == {
        "events": 3,
        "replays": 0,
        "fills": fills,
        "cash": cash,
        "delays": 3,
        "transactions": 1,
        "batched_events": 3,
        "letters": 1,
    }

    before = written_so_far()
    await writer.handle(records(values))
    assert grown(before) == {
        "events": 0,
        "replays": 3,
        "fills": 0,
        "cash": 0,
        "delays": 3,
        "transactions": 1,
        "batched_events": 3,
        "letters": 0,
    }


class HeldBatches:
    """A handler whose batches are done only once `release` is set (a slow database)."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.handled = 0

    async def handle(self, records: Sequence[ConsumerRecord]) -> None:
        await self.release.wait()
        self.handled += len(records)

    async def healthy(self) -> bool:
        return True

    async def give_up(self, record: ConsumerRecord, reason: str) -> None:
        raise AssertionError("nothing is given up here")


async def eventually(check: Callable[[], Awaitable[bool] | bool], what: str) -> None:
    deadline = time.monotonic() + 30
    while True:
        done = check()
        if done if isinstance(done, bool) else await done:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"not within 30s: {what}")
        await asyncio.sleep(0.02)


async def test_a_partitions_lag_is_the_records_after_its_last_commit(
    kafka_bootstrap: str, topics: Topics
) -> None:
    group = f"lag-{topics.raw}"
    handler = HeldBatches()
    async with consuming_clients(kafka_bootstrap, topics.raw, group) as (producer, consumer, stop):
        sent = [await producer.send_and_wait(topics.raw, b"%d" % n, key=b"k") for n in range(6)]
        partition = str(sent[0].partition)

        def lag() -> float:
            return sample(
                "poscal_consumer_lag_records", group=group, topic=topics.raw, partition=partition
            )

        metrics = ConsumerMetrics(consumer, group, every_seconds=0.01)
        loop = asyncio.create_task(
            consume_batches(consumer, handler, stop, max_records=100, metrics=metrics)
        )
        # Fetched but not done: all six still count, while the batch is in hand.
        await eventually(lambda: lag() == 6, "the six records counted as lag")
        assert sample("poscal_consumer_commits_total", group=group) == 0
        handler.release.set()
        await eventually(lambda: lag() == 0, "no lag once committed")
        assert sample("poscal_consumer_records_committed_total", group=group) == 6
        assert sample("poscal_consumer_commits_total", group=group) >= 1
        assert sample("poscal_consumer_batch_records_sum", group=group) == handler.handled == 6
        stop.set()
        await loop
