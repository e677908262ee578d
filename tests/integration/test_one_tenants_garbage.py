"""One tenant's garbage, however long a run of it, stops no consumer: the normalizer against the
real broker dead-letters all of it and goes on to the next tenant's valid event, while a run of
failures across many tenants (a bad deploy) still stops it uncommitted."""

from __future__ import annotations

import asyncio
import time

import asyncpg
import pytest
from aiokafka import AIOKafkaProducer

from services.devstack.demo import encode_body
from services.normalizer.pipeline import Normalizer
from services.shared.canonical import CanonicalBatch
from services.shared.consuming import consume_batches
from services.shared.dead_letters import (
    DeadLetterBudget,
    DeadLetterBudgetExceeded,
    DeadLetterPublisher,
)
from services.shared.settings import Topics
from services.shared.vault import CredentialVault
from tests.support.builders import (
    TestConnection,
    connect_account,
    fixture_deals,
    mt5_body,
    new_connection,
    raw_event,
)
from tests.support.kafka import committed_offset, read_topic
from tests.support.kafka_clients import consuming_clients

pytestmark = pytest.mark.integration


def normalizer_stopped_only_by_runs_across_tenants(
    producer: AIOKafkaProducer, topics: Topics, group: str
) -> Normalizer:
    """The normalizer with the budget these specs are about: only a run of more than five dead
    letters in a row that spans three sources (tenants) or more stops it."""
    budget = DeadLetterBudget(max_consecutive=5, min_sources=3)
    dead_letters = DeadLetterPublisher(producer, topics.dead_letter, "normalizer", budget)
    return Normalizer(producer, topics.canonical, dead_letters, group)


async def test_a_long_run_of_one_tenants_garbage_is_dead_lettered_and_the_next_event_goes_on(
    kafka_bootstrap: str, topics: Topics, connection: TestConnection
) -> None:
    group = f"garbage-{topics.raw}"
    valid = raw_event(connection, encode_body(mt5_body(connection.login, fixture_deals())))
    async with consuming_clients(kafka_bootstrap, topics.raw, group) as (producer, consumer, stop):
        for _ in range(30):  # six times the run that would stop it, from one connection
            await producer.send_and_wait(topics.raw, b"garbage", key=b"hostile-connection")
        await producer.send_and_wait(
            topics.raw, valid.model_dump_json().encode(), key=b"hostile-connection"
        )
        normalizer = normalizer_stopped_only_by_runs_across_tenants(producer, topics, group)
        loop = asyncio.create_task(consume_batches(consumer, normalizer, stop, max_records=7))
        [canonical] = await read_topic(kafka_bootstrap, topics.canonical, expect=1)
        deadline = time.monotonic() + 20
        while await committed_offset(kafka_bootstrap, group, topics.raw) < 31:
            assert not loop.done(), loop
            assert time.monotonic() < deadline, "not all committed"
            await asyncio.sleep(0.05)
        stop.set()
        await loop
    assert CanonicalBatch.model_validate_json(canonical.value).event_id == valid.event_id
    assert len(await read_topic(kafka_bootstrap, topics.dead_letter, expect=30)) == 30


async def test_one_user_sending_garbage_from_many_connections_stops_no_one(
    kafka_bootstrap: str, pool: asyncpg.Pool, vault: CredentialVault, topics: Topics
) -> None:
    async with pool.acquire() as conn:
        first = await new_connection(conn, vault)
        more = [
            await connect_account(conn, vault, first.user_id, first.login * 100 + n)
            for n in range(1, 12)
        ]
        other = await new_connection(conn, vault)
    group = f"one-user-{topics.raw}"
    async with consuming_clients(kafka_bootstrap, topics.raw, group) as (producer, consumer, stop):
        for _ in range(3):  # every connection of the user, over and over: a long run
            for connection in [first, *more]:
                event = raw_event(connection, b'{"account": "not an account"}')
                await producer.send_and_wait(
                    topics.raw,
                    event.model_dump_json().encode(),
                    key=str(connection.created.connection_id).encode(),
                )
        valid = raw_event(other, encode_body(mt5_body(other.login, fixture_deals())))
        await producer.send_and_wait(
            topics.raw,
            valid.model_dump_json().encode(),
            key=str(other.created.connection_id).encode(),
        )
        normalizer = normalizer_stopped_only_by_runs_across_tenants(producer, topics, group)
        loop = asyncio.create_task(consume_batches(consumer, normalizer, stop, max_records=7))
        [canonical] = await read_topic(kafka_bootstrap, topics.canonical, expect=1)
        assert not loop.done()
        stop.set()
        await loop
    assert CanonicalBatch.model_validate_json(canonical.value).event_id == valid.event_id


async def test_a_run_of_failures_across_many_tenants_still_stops_the_consumer_uncommitted(
    kafka_bootstrap: str, topics: Topics
) -> None:
    group = f"deploy-{topics.raw}"
    async with consuming_clients(kafka_bootstrap, topics.raw, group) as (producer, consumer, _):
        for n in range(12):
            await producer.send_and_wait(topics.raw, b"garbage", key=f"tenant-{n}".encode())
        normalizer = normalizer_stopped_only_by_runs_across_tenants(producer, topics, group)
        with pytest.raises(DeadLetterBudgetExceeded):
            await asyncio.wait_for(
                consume_batches(consumer, normalizer, asyncio.Event(), max_records=20), 30
            )
    assert await committed_offset(kafka_bootstrap, group, topics.raw) < 12
