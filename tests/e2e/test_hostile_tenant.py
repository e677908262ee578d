"""One tenant sends hostile but correctly signed webhooks through the real services; then other
tenants, on the same partitions, send valid ones: all of theirs reach the journal, every service
stays up, and the hostile tenant's own valid deals are written too.

The hostile bodies are the instances that once stopped, stalled or corrupted the pipeline for
everyone, and their relatives.
"""

from __future__ import annotations

import asyncio
import time
from decimal import Decimal
from typing import Any

import asyncpg
import httpx
import pytest
from aiokafka.partitioner import DefaultPartitioner

from services.devstack.demo import encode_body, send_signed
from services.devstack.stack import DevStack
from services.shared.dead_letters import DeadLetter
from services.shared.vault import CredentialVault
from tests.support.builders import TestConnection, fixture_deals, mt5_body, new_connection
from tests.support.json_as_sent import json_as_sent
from tests.support.kafka import read_topic

pytestmark = pytest.mark.e2e

PARTITIONS = 6  # the dev stack's topics
VICTIMS_ON_THE_SAME_PARTITION = 3


def partition_of(connection: TestConnection) -> int:
    key = str(connection.created.connection_id).encode()
    partition: int = DefaultPartitioner()(key, list(range(PARTITIONS)), list(range(PARTITIONS)))
    return partition


def deal(ticket: int, **changes: Any) -> dict[str, Any]:
    """A closing deal of its own position, so each hostile body's valid deals are a row."""
    return fixture_deals()[0] | {"ticket": ticket, "order": ticket, "position_id": ticket} | changes


def hostile_bodies(login: int) -> list[bytes]:
    def with_good(n: int, *bad: dict[str, Any], **account: Any) -> bytes:
        body = mt5_body(login, [deal(700_000 + n), *bad])
        body["account"] |= account
        return json_as_sent(body)

    nested = '{"deeper":[' * 150 + "0" + "]}" * 150
    return [
        with_good(1, deal(800_001, price=Decimal("1e999999"))),
        with_good(2, deal(800_002, volume=Decimal("1e16"))),
        with_good(3, deal(800_003, comment="closed \ud800 by hand")),
        with_good(4, deal(800_004, symbol="EUR\x00USD")),
        with_good(5, deal(800_005, time=32_503_679_999, time_msc=32_503_679_999_000)),
        with_good(6, *[deal(810_000 + n, volume="lots", comment="x" * 200) for n in range(300)]),
        with_good(7, balance=Decimal("1e200000")),
        with_good(8, deal(800_008, comment="NESTED")).replace(b'"NESTED"', nested.encode()),
        b"[" * 100_000 + b"]" * 100_000,
        b"\xff\xfe\x00 not JSON, not even UTF-8",
        b"[]",
        b'{"account": {"login": ' + str(login).encode() + b', "server": {}}, "deals": 7}',
    ]


async def send(client: httpx.AsyncClient, connection: TestConnection, body: bytes) -> None:
    response = await send_signed(client, connection.created, body)
    assert response.status_code == 202, response.text


async def events_recorded(pool: asyncpg.Pool, connection: TestConnection) -> int:
    count: int = await pool.fetchval(
        "SELECT count(*) FROM sync_events WHERE connection_id = $1",
        connection.created.connection_id,
    )
    return count


async def test_a_hostile_tenant_stops_no_one_and_loses_nothing_valid(
    pool: asyncpg.Pool, vault: CredentialVault, stack: DevStack
) -> None:
    async with pool.acquire() as conn:
        hostile = await new_connection(conn, vault, ingest_url=stack.ingest_url)
        victims: list[TestConnection] = []
        while sum(partition_of(v) == partition_of(hostile) for v in victims) < (
            VICTIMS_ON_THE_SAME_PARTITION
        ):
            victims.append(await new_connection(conn, vault, ingest_url=stack.ingest_url))
    bodies = hostile_bodies(hostile.login)
    async with httpx.AsyncClient(timeout=30) as client:
        for body in bodies:
            await send(client, hostile, body)
        for victim in victims:
            await send(client, victim, encode_body(mt5_body(victim.login, fixture_deals())))

    deadline = time.monotonic() + 60
    while not all([await events_recorded(pool, v) == 1 for v in victims]):
        stack.check_alive()
        assert time.monotonic() < deadline, "the other tenants' webhooks did not all arrive"
        await asyncio.sleep(0.1)

    for victim in victims:  # whole and right, however the hostile records were handled
        [row] = await pool.fetch(
            "SELECT status, profit FROM trading_journal WHERE connection_id = $1",
            victim.created.connection_id,
        )
        assert (row["status"], row["profit"]) == ("closed", Decimal("75.00"))
    stack.check_alive()  # every service is still up

    # The hostile tenant's own valid deals were written, one row per body that carried one.
    hostile_rows = await pool.fetch(
        "SELECT mt5_trade_id FROM trading_journal WHERE connection_id = $1",
        hostile.created.connection_id,
    )
    assert {r["mt5_trade_id"].rsplit(":", 1)[1] for r in hostile_rows} == {
        str(700_000 + n) for n in range(1, 9)
    }
    balance = await pool.fetchval(
        "SELECT current_balance FROM trading_accounts WHERE id = $1", hostile.created.account_id
    )
    assert balance == Decimal("1000.00")  # the valid reports' balance, never 0 or 1e200000

    # One letter per hostile body (whole, or listing its refused items), each with its reason.
    mine = await letters_of(stack, hostile, len(bodies))
    assert len(mine) == len(bodies)
    assert all(x.reason_code and x.reason for x in mine)


async def letters_of(stack: DevStack, tenant: TestConnection, expected: int) -> list[DeadLetter]:
    """The tenant's dead letters, once `expected` are there (others' may be on the topic too)."""
    deadline = time.monotonic() + 30
    while True:
        records = await read_topic(
            stack.kafka_bootstrap_servers or "", stack.topics.dead_letter, expect=1
        )
        letters = [DeadLetter.model_validate_json(r.value) for r in records]
        mine = [x for x in letters if x.key == str(tenant.created.connection_id)]
        if len(mine) >= expected or time.monotonic() > deadline:
            return mine
        await asyncio.sleep(0.2)
