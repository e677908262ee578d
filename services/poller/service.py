"""The poller's loop: lease due connections up to its concurrency, sync each in its own task
(never two of one connection), and on stop let running syncs finish their page.

How often one user's connections sync is held by the lease query (`UserSyncLimit`), across
replicas, not here."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import uuid
from collections.abc import Callable, Coroutine
from typing import Any

from services.poller.schedule import DueSync, LeaseLost, SyncSchedule
from services.shared.logging import get_logger

_log = get_logger("poscal.poller")


class Poller:
    def __init__(
        self,
        schedule: SyncSchedule,
        sync: Callable[[DueSync], Coroutine[Any, Any, str]],
        *,
        concurrency: int,
        tick_seconds: float,
        shutdown_grace_seconds: float = 10.0,
    ) -> None:
        self._schedule = schedule
        self._sync = sync
        self._concurrency = concurrency
        self._tick = tick_seconds
        self._grace = shutdown_grace_seconds
        self._running: dict[uuid.UUID, asyncio.Task[str]] = {}

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self.tick()
            waiters: set[asyncio.Future[object]] = {asyncio.ensure_future(stop.wait())}
            _, pending = await asyncio.wait(
                waiters | set(self._running.values()),
                timeout=self._tick,
                return_when=asyncio.FIRST_COMPLETED,
            )
            for waiter in waiters & pending:
                waiter.cancel()
        await self._finish_running()

    async def tick(self) -> int:
        """Lease and start what is due (as many as there are free slots); returns how many."""
        free = self._concurrency - len(self._running)
        if free <= 0:
            return 0
        try:
            due = await self._schedule.lease_due(free, exclude=frozenset(self._running))
        except Exception as exc:  # the database is away: try again next tick
            _log.warning("cannot lease due connections", cause=type(exc).__name__)
            return 0
        started = 0
        for item in due:
            connection_id = item.connection.connection_id
            if connection_id in self._running:
                # Leased again while a sync of it still runs here (its lease had run out): that
                # sync's writes now fail on the old token; hand the new lease straight back.
                with contextlib.suppress(LeaseLost):
                    await self._schedule.postpone(item.lease, 0)
                continue
            task = asyncio.create_task(self._sync(item), name=f"sync-{connection_id}")
            self._running[connection_id] = task
            task.add_done_callback(functools.partial(self._finished, connection_id))
            started += 1
        return started

    def _finished(self, connection_id: uuid.UUID, task: asyncio.Task[str]) -> None:
        if self._running.get(connection_id) is task:
            del self._running[connection_id]
        if not task.cancelled() and task.exception() is not None:
            _log.error("sync crashed", cause=repr(task.exception()))

    async def drain(self) -> None:
        """Wait for every running sync (tests, and a clean stop)."""
        while self._running:
            await asyncio.wait(set(self._running.values()))

    async def _finish_running(self) -> None:
        if not self._running:
            return
        _, pending = await asyncio.wait(set(self._running.values()), timeout=self._grace)
        for task in pending:  # their leases run out and another replica picks them up
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*pending, return_exceptions=True)
