"""When each event's rows were committed, read from Postgres itself: no observer in the path.

The writer records an event's `sync_events` row in the transaction that inserts its fills and
recomputes its journal rows (services/writer/repository.py `JournalRepository.apply`), so the
commit timestamp of that row's `xmin` is the moment the event's fills and journal rows were
committed. Postgres takes it (with `track_commit_timestamp`, on in the embedded cluster) from the
same wall clock as the sender's `time.time()`, just before the commit record; with
`synchronous_commit=off` the rows are visible microseconds later. `VisibilityProbe` measures that
gap in the same run, from outside: it polls for a sample of the events and records when each
first became visible.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection as Pipe

import asyncpg

_CHUNK = 5000
_READY = "ready"
_COMMITTED = (
    "SELECT event_id, extract(epoch FROM pg_xact_commit_timestamp(xmin))::float8 AS at"
    " FROM sync_events WHERE event_id = ANY($1::uuid[])"
)


async def committed_at(
    conn: asyncpg.Connection, event_ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, float]:
    """The commit time (epoch seconds) of each of these events already committed."""
    if await conn.fetchval("SHOW track_commit_timestamp") != "on":
        raise RuntimeError("Postgres must run with track_commit_timestamp=on")
    found: dict[uuid.UUID, float] = {}
    for start in range(0, len(event_ids), _CHUNK):
        rows = await conn.fetch(_COMMITTED, list(event_ids[start : start + _CHUNK]))
        found.update((row["event_id"], row["at"]) for row in rows)
    return found


async def wait_until_committed(
    conn: asyncpg.Connection, event_ids: Sequence[uuid.UUID], quiet_seconds: float
) -> dict[uuid.UUID, float]:
    """Commit times of these events, once all are committed or `quiet_seconds` have passed
    with none more committed."""
    found: dict[uuid.UUID, float] = {}
    missing = list(event_ids)
    quiet_since = time.monotonic()
    while missing:
        more = await committed_at(conn, missing)
        if more:
            found.update(more)
            missing = [e for e in missing if e not in more]
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since > quiet_seconds:
            break
        if missing:
            await asyncio.sleep(0.25)
    return found


@dataclass(frozen=True)
class ProbeResult:
    """When each sampled event was first seen committed, and what polling cost the probe."""

    seen_at: dict[uuid.UUID, float]
    cpu_seconds: float
    polls: int


async def _probe(
    pipe: Pipe,
    database_url: str,
    due: list[tuple[uuid.UUID, float]],
    interval: float,
    until: float,
) -> ProbeResult:
    conn = await asyncpg.connect(database_url)
    pipe.send(_READY)
    seen: dict[uuid.UUID, float] = {}
    pending = sorted(due, key=lambda d: d[1])
    polls = 0
    cpu_started = time.process_time()
    try:
        while pending and time.time() < until:
            now = time.time()
            looking = [event_id for event_id, at in pending if at <= now]
            if looking:
                rows = await conn.fetch(
                    "SELECT event_id FROM sync_events WHERE event_id = ANY($1::uuid[])", looking
                )
                polls += 1
                at = time.time()
                found = {row["event_id"] for row in rows}
                seen.update((event_id, at) for event_id in found)
                pending = [d for d in pending if d[0] not in found]
            await asyncio.sleep(interval)
    finally:
        await conn.close()
    return ProbeResult(seen, time.process_time() - cpu_started, polls)


def _run_probe(
    pipe: Pipe, database_url: str, due: list[tuple[uuid.UUID, float]], interval: float, until: float
) -> None:
    pipe.send(asyncio.run(_probe(pipe, database_url, due, interval, until)))
    pipe.close()


class VisibilityProbe:
    """A process of its own (so its CPU is not the generator's), polling on one connection every
    `interval` seconds for the sampled events already due, until each is seen or `until`.
    Started (connected and polling) once the constructor returns."""

    def __init__(
        self,
        database_url: str,
        due: list[tuple[uuid.UUID, float]],
        interval: float,
        until: float,
    ) -> None:
        context = multiprocessing.get_context("spawn")
        self._pipe, child = context.Pipe(duplex=False)
        self._process = context.Process(
            target=_run_probe, args=(child, database_url, due, interval, until), daemon=True
        )
        self._process.start()
        child.close()
        # Polling before the run starts, so that no commit happens before it looks.
        if not self._pipe.poll(60) or self._pipe.recv() != _READY:
            self._stop()
            raise RuntimeError("the visibility probe did not start")

    def result(self, timeout: float) -> ProbeResult | None:
        try:
            if self._pipe.poll(timeout):
                return self._pipe.recv()  # type: ignore[no-any-return]
            return None
        finally:
            self._stop()

    def _stop(self) -> None:
        self._process.join(1)
        if self._process.is_alive():
            self._process.terminate()
            self._process.join()
