"""The attempt log: every delivery attempt, accepted or refused, recorded off the request path."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from services.ingest.database_calls import DATABASE_FAILURES
from services.ingest.metrics import AUDIT_DROPPED, AUDIT_FLUSH_FAILURES, AUDIT_GAPS, WEBHOOKS
from services.shared.logging import get_logger

_log = get_logger("poscal.ingest.audit")
_MAX_TEXT = 512
# Data this code let through that Postgres refuses anyway: retrying cannot help.
_REFUSED_DATA = (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError)


def printable(text: str | None, limit: int = _MAX_TEXT) -> str | None:
    """Header text fit for a column: printable characters only, bounded."""
    if text is None:
        return None
    return "".join(ch if ch.isprintable() else "\ufffd" for ch in text[:limit])


def _text(text: str, limit: int = 64) -> str:
    return printable(text, limit) or ""


@dataclass
class Attempt:
    """One delivery attempt, as far as it is known (copied with each thing learned about it);
    recorded once it is answered."""

    broker: str
    received_at: datetime
    client_ip: str | None
    user_agent: str | None
    # The URL's last segment, if it is a UUID; the connection once it is found by it.
    webhook_path_id: uuid.UUID | None = None
    connection_id: uuid.UUID | None = None
    user_id: uuid.UUID | None = None
    webhook_id: str | None = None
    webhook_timestamp: int | None = None
    event_id: uuid.UUID | None = None
    status_code: int = 0
    reason: str = ""
    # How many attempts this record stands for: more than 1 only for a window of throttled
    # attempts folded into one (see client_refusals.py).
    attempts: int = 1

    @property
    def accepted(self) -> bool:
        return self.status_code == 202


class HeldAttempts(Protocol):
    """Attempts answered but held back for a while, to be recorded as one record later."""

    def release(self, *, everything: bool = False) -> list[Attempt]:
        """The records complete now (with `everything`, all of them: at shutdown)."""
        ...

    def held_since(self) -> datetime | None:
        """When the earliest attempt still held back was received, if any."""
        ...


class _NothingHeld:
    def release(self, *, everything: bool = False) -> list[Attempt]:
        return []

    def held_since(self) -> datetime | None:
        return None


_INSERT_ATTEMPTS = """
INSERT INTO webhook_attempts (connection_id, user_id, broker, outcome, status_code, reason,
    client_ip, user_agent, webhook_id, webhook_timestamp, event_id, received_at,
    webhook_path_id, attempts)
SELECT v.connection_id, u.id, v.broker, v.outcome, v.status_code, v.reason, v.client_ip,
    v.user_agent, v.webhook_id, v.webhook_timestamp, v.event_id, v.received_at,
    v.webhook_path_id, v.attempts
FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::smallint[], $6::text[],
    $7::inet[], $8::text[], $9::text[], $10::bigint[], $11::uuid[], $12::timestamptz[],
    $13::uuid[], $14::integer[])
    WITH ORDINALITY AS v(connection_id, user_id, broker, outcome, status_code, reason, client_ip,
         user_agent, webhook_id, webhook_timestamp, event_id, received_at, webhook_path_id,
         attempts, arrival)
LEFT JOIN auth.users u ON u.id = v.user_id  -- a user deleted meanwhile: recorded without one
ORDER BY v.arrival  -- ids follow the order attempts arrived in
"""

# The latest address and agent a connection was seen with, and its last success (the failure
# count is reset on the request path, with the acceptance: see replays.py).
_RECORD_SUCCESSES = """
UPDATE mt5_security_audit AS a SET
    last_success_at = greatest(a.last_success_at, v.at),
    last_ip = CASE WHEN v.at >= coalesce(greatest(a.last_success_at, a.last_failure_at),
        '-infinity') THEN v.ip ELSE a.last_ip END,
    last_user_agent = CASE WHEN v.at >= coalesce(greatest(a.last_success_at, a.last_failure_at),
        '-infinity') THEN v.user_agent ELSE a.last_user_agent END,
    updated_at = now()
FROM unnest($1::uuid[], $2::timestamptz[], $3::inet[], $4::text[]) AS v(connection_id, at, ip,
    user_agent)
WHERE a.connection_id = v.connection_id
"""


def _latest_success_per_connection(batch: list[Attempt]) -> list[Attempt]:
    latest: dict[uuid.UUID, Attempt] = {}
    for attempt in batch:
        if attempt.accepted and attempt.connection_id is not None:
            seen = latest.get(attempt.connection_id)
            if seen is None or attempt.received_at >= seen.received_at:
                latest[attempt.connection_id] = attempt
    return list(latest.values())


_RECORD_PROGRESS = """
UPDATE public.ingest_instances SET flushed_through = greatest(flushed_through, $2)
WHERE instance_id = $1
"""

_RECORD_OVERFLOW = """
INSERT INTO public.webhook_audit_gaps (instance_id, reason, window_start, window_end, unrecorded,
    detected_by)
VALUES ($1, 'queue_overflow', $2, $3, $4, $1)
"""


@dataclass(frozen=True)
class _Dropped:
    """Attempts dropped from a full queue, not yet written down as an audit gap."""

    first: datetime
    last: datetime
    count: int

    def merge(self, other: _Dropped | None) -> _Dropped:
        if other is None:
            return self
        return _Dropped(
            min(self.first, other.first), max(self.last, other.last), self.count + other.count
        )


class AuditTrail:
    """Records are queued in memory and written in batches (one transaction each): the attempt
    rows, each connection's success aggregates in `mt5_security_audit`, and how far this
    instance's record is complete (`ingest_instances.flushed_through`, so a death is bounded:
    see instances.py). Auditing never decides whether an event is accepted, so it can neither
    lose nor double one; if Postgres stays away the queue is bounded, and what overflows is
    written down as an audit gap.

    `instance_id` is the registered ingest instance whose `flushed_through` each written batch
    moves forward, in the batch's own transaction. That mark never passes a request still being
    answered (`oldest_in_flight` says when the oldest one began), nor an attempt held back in a
    record that is not complete yet (`held`: a window of folded refusals, client_refusals.py),
    whose record this loop takes once it is."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        instance_id: uuid.UUID | None = None,
        oldest_in_flight: Callable[[], float | None] = lambda: None,
        held: HeldAttempts | None = None,
        flush_interval_seconds: float = 0.2,
        batch_size: int = 1000,
        max_queued: int = 50_000,
        idle_progress_seconds: float = 1.0,
    ) -> None:
        self._pool = pool
        self.instance_id = instance_id or uuid.uuid4()
        self._oldest_in_flight = oldest_in_flight
        self._held = held or _NothingHeld()
        self._interval = flush_interval_seconds
        self._batch_size = batch_size
        self._max_queued = max_queued
        self._idle_progress = idle_progress_seconds
        self._progress_at = -math.inf
        self._queue: list[Attempt] = []
        self._dropped: _Dropped | None = None
        self._task: asyncio.Task[None] | None = None
        self._flushing = asyncio.Lock()  # one writer: a batch is taken from the queue once
        self._not_writing = asyncio.Event()
        self._not_writing.set()

    def record(self, attempt: Attempt) -> None:
        WEBHOOKS.labels("accepted" if attempt.accepted else "refused", attempt.reason).inc(
            attempt.attempts
        )
        if len(self._queue) >= self._max_queued:
            AUDIT_DROPPED.inc()
            at = attempt.received_at
            self._dropped = _Dropped(at, at, 1).merge(self._dropped)
            return
        self._queue.append(attempt)

    def all_recorded(self) -> bool:
        """Every attempt recorded so far is written, or covered by a written audit gap."""
        return not self._queue and self._dropped is None and self._held.held_since() is None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="audit-trail")

    async def stop(self, timeout_seconds: float = 5.0) -> None:
        if self._task is not None:
            await self._between_writes(timeout_seconds)
            self._task.cancel()  # waiting for a connection or for its next flush: nothing lost
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._take_held(everything=True)
        with contextlib.suppress(TimeoutError, *DATABASE_FAILURES):
            async with asyncio.timeout(timeout_seconds):
                while not self.all_recorded():
                    await self.flush()
        if self._queue:
            AUDIT_DROPPED.inc(len(self._queue))
            _log.error("attempt records not written at shutdown", count=len(self._queue))

    async def _between_writes(self, timeout_seconds: float) -> None:
        """Wait for the write under way, if any, to be answered: cancelled while its commit was
        sent but not answered, its batch would stay queued and be written a second time."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_seconds):
                while not self._not_writing.is_set():
                    await self._not_writing.wait()

    async def _run(self) -> None:
        delay = self._interval
        while True:
            await asyncio.sleep(delay)
            try:
                await self.flush()
                delay = self._interval
            except DATABASE_FAILURES as exc:
                AUDIT_FLUSH_FAILURES.inc()
                delay = min(5.0, delay * 2)
                _log.warning(
                    "attempt records not written yet; retrying",
                    cause=type(exc).__name__,
                    queued=len(self._queue),
                )

    async def flush(self) -> None:
        """Write what is queued now, a batch at a time (a batch that fails stays queued), and
        how far the record is complete."""
        async with self._flushing:
            self._take_held()
            await self._flush_queue()

    def _take_held(self, *, everything: bool = False) -> None:
        for attempt in self._held.release(everything=everything):
            self.record(attempt)

    def _progress_mark(self) -> datetime:
        """Every attempt received before this is queued by now, or written already."""
        now = time.time()
        oldest = self._oldest_in_flight()
        mark = datetime.fromtimestamp(now if oldest is None else min(now, oldest), UTC)
        held = self._held.held_since()
        return mark if held is None else min(mark, held)

    async def _flush_queue(self) -> None:
        mark = self._progress_mark()
        pending = len(self._queue)  # what arrives meanwhile is the next flush's
        if not pending and self._dropped is None:
            if time.monotonic() - self._progress_at >= self._idle_progress:
                await self._write([], mark)
                self._progress_at = time.monotonic()
            return
        while True:
            batch = self._queue[: min(self._batch_size, pending)]
            progress = mark if len(batch) == pending else None
            try:
                await self._write(
                    batch, progress, written=functools.partial(self._dequeue, len(batch))
                )
            except _REFUSED_DATA:
                # One record Postgres refuses must not cost the others: write them one by one,
                # each off the queue once written (an outage midway must not write it twice).
                for attempt in batch:
                    await self._write_alone(attempt)
                if progress is not None:
                    await self._write([], progress)
            pending -= len(batch)
            if pending <= 0:
                break
        self._progress_at = time.monotonic()

    def _dequeue(self, count: int) -> None:
        del self._queue[:count]

    async def _write_alone(self, attempt: Attempt) -> None:
        try:
            await self._write([attempt], None, written=lambda: self._queue.remove(attempt))
        except _REFUSED_DATA as exc:
            self._queue.remove(attempt)
            AUDIT_DROPPED.inc()
            _log.error("attempt record refused by the database", cause=type(exc).__name__)

    async def _write(
        self,
        batch: list[Attempt],
        progress: datetime | None,
        *,
        written: Callable[[], None] = lambda: None,
    ) -> None:
        """Write `batch` (and `progress`, and any audit gap) in one transaction; `written` takes
        it off the queue as soon as the commit is answered, before the connection goes back to
        the pool: a shutdown that cancels the loop while it is released must not find the batch
        still queued and write it a second time."""
        successes = _latest_success_per_connection(batch)
        dropped, self._dropped = self._dropped, None
        committed = False
        try:
            async with self._pool.acquire() as conn:
                self._not_writing.clear()
                try:
                    async with conn.transaction():
                        if batch:
                            await self._insert(conn, batch, successes)
                        if progress is not None:
                            await conn.execute(_RECORD_PROGRESS, self.instance_id, progress)
                        if dropped is not None:
                            await conn.execute(
                                _RECORD_OVERFLOW,
                                self.instance_id,
                                dropped.first,
                                dropped.last,
                                dropped.count,
                            )
                    committed = True
                    written()
                    if dropped is not None:
                        AUDIT_GAPS.labels("queue_overflow").inc()
                        _log.error(
                            "attempt records dropped while the database was away",
                            alert="audit_gap",
                            count=dropped.count,
                            window_start=dropped.first.isoformat(),
                            window_end=dropped.last.isoformat(),
                        )
                finally:
                    self._not_writing.set()
        except BaseException:
            if dropped is not None and not committed:
                self._dropped = dropped.merge(self._dropped)
            raise

    async def _insert(
        self, conn: PoolConnectionProxy, batch: list[Attempt], successes: list[Attempt]
    ) -> None:
        await conn.execute(
            _INSERT_ATTEMPTS,
            [a.connection_id for a in batch],
            [a.user_id for a in batch],
            [_text(a.broker) for a in batch],
            ["accepted" if a.accepted else "refused" for a in batch],
            [a.status_code for a in batch],
            [a.reason for a in batch],
            [a.client_ip for a in batch],
            [printable(a.user_agent) for a in batch],
            [printable(a.webhook_id, 256) for a in batch],
            [a.webhook_timestamp for a in batch],
            [a.event_id for a in batch],
            [a.received_at for a in batch],
            [a.webhook_path_id for a in batch],
            [a.attempts for a in batch],
        )
        if successes:
            await conn.execute(
                _RECORD_SUCCESSES,
                [a.connection_id for a in successes],
                [a.received_at for a in successes],
                [a.client_ip for a in successes],
                [printable(a.user_agent) for a in successes],
            )
