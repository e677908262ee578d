"""The writer against the real database: whatever one event provokes (an exception of any type,
a value the database refuses, content no contract allows), that event is found and
dead-lettered and every other event of its batch is written; the writer never stops for it."""

from __future__ import annotations

import decimal
import math
from collections.abc import Sequence

import asyncpg
import orjson
import pytest

from services.devstack.demo import encode_body
from services.normalizer.pipeline import normalize
from services.shared.canonical import CanonicalBatch
from services.shared.database import Connection
from services.shared.dead_letters import DeadLetter, DeadLetterBudget, DeadLetterPublisher
from services.shared.vault import CredentialVault
from services.writer.pipeline import Writer
from services.writer.repository import EventOutcome, JournalRepository
from tests.support.builders import (
    TestConnection,
    deposit_deal,
    fixture_deals,
    mt5_body,
    new_connection,
    raw_event,
)
from tests.support.producers import FakeProducer
from tests.support.records import consumer_record

pytestmark = pytest.mark.integration


class ProvokedBy(JournalRepository):
    """The real repository, but an event whose id is in `poison` provokes `failure` in our own
    code (as a bug some content triggers would), and every call is counted."""

    def __init__(self, poison: set[str], failure: Exception) -> None:
        self.poison = poison
        self.failure = failure
        self.calls = 0

    async def apply(
        self, conn: Connection, batches: Sequence[CanonicalBatch]
    ) -> list[EventOutcome]:
        self.calls += 1
        if any(str(b.event_id) in self.poison for b in batches):
            raise self.failure
        return await super().apply(conn, batches)


async def events(pool: asyncpg.Pool, vault: CredentialVault, count: int) -> list[CanonicalBatch]:
    """`count` events of as many tenants, each a closed trade and a deposit."""
    batches = []
    async with pool.acquire() as conn:
        for _ in range(count):
            tenant = await new_connection(conn, vault)
            deals = [*fixture_deals(), deposit_deal(990_001)]
            body = encode_body(mt5_body(tenant.login, deals))
            batches.append(normalize(raw_event(tenant, body)).batch)
    return batches


def records(batches: Sequence[CanonicalBatch | bytes]) -> list[object]:
    return [
        consumer_record(
            b if isinstance(b, bytes) else b.model_dump_json().encode(),
            topic="poscal.canonical",
            offset=offset,
        )
        for offset, b in enumerate(batches)
    ]


def writer(pool: asyncpg.Pool, repository: JournalRepository, producer: FakeProducer) -> Writer:
    letters = DeadLetterPublisher(producer, "poscal.dead", "writer", DeadLetterBudget(100))
    return Writer(pool, repository, letters, "poscal-writer")


def letters(producer: FakeProducer) -> list[DeadLetter]:
    return [DeadLetter.model_validate_json(v) for v in producer.sent.get("poscal.dead", [])]


async def written(pool: asyncpg.Pool, batches: Sequence[CanonicalBatch]) -> set[str]:
    rows = await pool.fetch(
        "SELECT event_id FROM sync_events WHERE event_id = ANY($1::uuid[])",
        [b.event_id for b in batches],
    )
    return {str(r["event_id"]) for r in rows}


@pytest.mark.parametrize(
    "failure",
    [
        decimal.Overflow("the instance that once stopped every tenant's writer for good"),
        KeyError("fill_key"),
        TypeError("unsupported operand"),
        asyncpg.PostgresError.new({"S": "ERROR", "C": "ZZ123", "M": "a code no one knows"}),
        asyncpg.exceptions.CheckViolationError("new row violates check constraint"),
    ],
    ids=lambda failure: type(failure).__name__,
)
async def test_the_one_event_a_failure_follows_is_dead_lettered_and_the_rest_written(
    pool: asyncpg.Pool, vault: CredentialVault, failure: Exception
) -> None:
    batches = await events(pool, vault, 16)
    poisoned = batches[11]
    repository = ProvokedBy({str(poisoned.event_id)}, failure)
    producer = FakeProducer()
    await writer(pool, repository, producer).handle(records(batches))
    [letter] = letters(producer)
    assert (letter.reason_code, letter.event_id, letter.offset) == (
        "write_rejected",
        str(poisoned.event_id),
        11,
    )
    assert type(failure).__name__ in letter.reason
    assert await written(pool, batches) == {str(b.event_id) for b in batches} - {
        str(poisoned.event_id)
    }
    # Found by halving, not by writing the batch event by event.
    assert repository.calls <= 2 * math.ceil(math.log2(len(batches))) + 1


async def test_two_events_failing_in_one_batch_are_each_dead_lettered(
    pool: asyncpg.Pool, vault: CredentialVault
) -> None:
    batches = await events(pool, vault, 9)
    poison = {str(batches[0].event_id), str(batches[8].event_id)}
    producer = FakeProducer()
    await writer(pool, ProvokedBy(poison, ValueError("bad")), producer).handle(records(batches))
    assert {x.event_id for x in letters(producer)} == poison
    assert await written(pool, batches) == {str(b.event_id) for b in batches} - poison


async def test_a_canonical_value_no_contract_allows_is_dead_lettered_on_arrival(
    pool: asyncpg.Pool, vault: CredentialVault
) -> None:
    good, bad = await events(pool, vault, 2)
    document = orjson.loads(bad.model_dump_json())
    document["fills"][0]["price"] = "1e999999"  # as an older or foreign producer might send
    producer = FakeProducer()
    await writer(pool, JournalRepository(), producer).handle(
        records([orjson.dumps(document), good])
    )
    [letter] = letters(producer)
    assert letter.reason_code == "invalid_canonical_batch"
    assert "smaller than 10^15" in letter.reason
    assert await written(pool, [good, bad]) == {str(good.event_id)}


async def test_an_event_whose_connection_is_gone_is_dead_lettered_and_the_rest_written(
    pool: asyncpg.Pool, vault: CredentialVault, connection: TestConnection
) -> None:
    orphan, *others = await events(pool, vault, 5)
    await pool.execute("DELETE FROM mt5_connections WHERE id = $1", orphan.connection.connection_id)
    producer = FakeProducer()
    await writer(pool, JournalRepository(), producer).handle(records([*others, orphan]))
    [letter] = letters(producer)
    assert (letter.event_id, letter.reason_code) == (str(orphan.event_id), "write_rejected")
    assert "ForeignKeyViolation" in letter.reason
    assert await written(pool, others) == {str(b.event_id) for b in others}
