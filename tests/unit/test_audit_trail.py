"""The attempt log's shutdown: a batch being committed, or whose connection is being given
back to the pool, when the service stops is written once."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any, cast

import asyncpg

from services.ingest.audit import Attempt, AuditTrail


def refusal() -> Attempt:
    return Attempt(
        broker="mt5",
        received_at=datetime.now(UTC),
        client_ip="203.0.113.9",
        user_agent="sender",
        status_code=409,
        reason="replay",
    )


class CommitAnsweredLate:
    """A pool whose commits take effect at once but whose answer waits for `answer`: the moment
    a shutdown may come in the middle of."""

    def __init__(self) -> None:
        self.committing = asyncio.Event()
        self.answer = asyncio.Event()
        self.attempts_written = 0
        self._pending = 0

    @asynccontextmanager
    async def acquire(self) -> AsyncIterator[CommitAnsweredLate]:
        yield self

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[None]:
        self._pending = 0
        yield
        self.attempts_written += self._pending  # committed: the rows are there
        self.committing.set()
        await self.answer.wait()

    async def execute(self, query: str, *args: Any) -> str:
        if "INSERT INTO webhook_attempts" in query:
            self._pending += len(args[0])
        return "OK"


async def test_stopping_while_a_batch_is_being_committed_writes_each_attempt_once() -> None:
    pool = CommitAnsweredLate()
    trail = AuditTrail(cast(asyncpg.Pool, pool), flush_interval_seconds=0)
    trail.record(refusal())
    trail.start()
    await pool.committing.wait()

    stopping = asyncio.create_task(trail.stop())
    await asyncio.sleep(0)  # the shutdown begins while the commit's answer is outstanding
    pool.answer.set()
    await stopping

    assert pool.attempts_written == 1
    assert trail.all_recorded()


class ReleasedLate(CommitAnsweredLate):
    """A pool whose commits are answered at once but whose connections take until `released`
    to go back to it (asyncpg resets a connection on its way back: a round trip)."""

    def __init__(self) -> None:
        super().__init__()
        self.releasing = asyncio.Event()
        self.released = asyncio.Event()
        self.answer.set()

    @asynccontextmanager
    async def acquire(self) -> AsyncIterator[ReleasedLate]:
        yield self
        if self.attempts_written:
            self.releasing.set()
            await self.released.wait()


async def test_stopping_while_a_written_batch_gives_its_connection_back_writes_it_once() -> None:
    pool = ReleasedLate()
    trail = AuditTrail(cast(asyncpg.Pool, pool), flush_interval_seconds=0)
    trail.record(refusal())
    trail.start()
    await pool.releasing.wait()

    await trail.stop()  # cancels the loop while the connection is on its way back

    assert pool.attempts_written == 1
    assert trail.all_recorded()
