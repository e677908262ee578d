"""The poller's loop: lease due connections up to its concurrency, sync each in its own task,
hold a user's syncs to their rate, and on stop let running syncs finish their page."""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
import uuid
from collections.abc import Callable, Coroutine
from typing import Any

from limits import parse_many
from limits.storage import MemoryStorage
from limits.strategies import SlidingWindowCounterRateLimiter

from services.poller.schedule import DueSync, SyncSchedule
from services.shared.logging import get_logger

_log = get_logger("poscal.poller")


class UserSyncRate:
    """At most so many syncs per user (per replica): one user's many connections wait their turn."""

    def __init__(self, rate: str) -> None:
        self._limiter = SlidingWindowCounterRateLimiter(MemoryStorage())
        self._items = parse_many(rate)

    def take(self, user_id: uuid.UUID) -> float | None:
        """None if this sync may run now; otherwise the seconds until it may."""
        key = str(user_id)
        for item in self._items:
            if not self._limiter.test(item, "user-sync", key):
                reset_at = self._limiter.get_window_stats(item, "user-sync", key).reset_time
                return max(1.0, math.ceil(reset_at - time.time()))
        for item in self._items:
            self._limiter.hit(item, "user-sync", key)
        return None


class Poller:
    def __init__(
        self,
        schedule: SyncSchedule,
        sync: Callable[[DueSync], Coroutine[Any, Any, str]],
        *,
        concurrency: int,
        tick_seconds: float,
        user_rate: UserSyncRate,
        shutdown_grace_seconds: float = 10.0,
    ) -> None:
        self._schedule = schedule
        self._sync = sync
        self._concurrency = concurrency
        self._tick = tick_seconds
        self._user_rate = user_rate
        self._grace = shutdown_grace_seconds
        self._running: set[asyncio.Task[str]] = set()

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self.tick()
            waiters: set[asyncio.Future[object]] = {asyncio.ensure_future(stop.wait())}
            _, pending = await asyncio.wait(
                waiters | set(self._running),
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
            due = await self._schedule.lease_due(free)
        except Exception as exc:  # the database is away: try again next tick
            _log.warning("cannot lease due connections", cause=type(exc).__name__)
            return 0
        started = 0
        for item in due:
            wait = self._user_rate.take(item.connection.user_id)
            if wait is not None:
                await self._schedule.postpone(item.connection.connection_id, wait)
                continue
            task = asyncio.create_task(
                self._sync(item), name=f"sync-{item.connection.connection_id}"
            )
            self._running.add(task)
            task.add_done_callback(self._finished)
            started += 1
        return started

    def _finished(self, task: asyncio.Task[str]) -> None:
        self._running.discard(task)
        if not task.cancelled() and task.exception() is not None:
            _log.error("sync crashed", cause=repr(task.exception()))

    async def drain(self) -> None:
        """Wait for every running sync (tests, and a clean stop)."""
        while self._running:
            await asyncio.wait(set(self._running))

    async def _finish_running(self) -> None:
        if not self._running:
            return
        _, pending = await asyncio.wait(set(self._running), timeout=self._grace)
        for task in pending:  # their leases run out and another replica picks them up
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*pending, return_exceptions=True)
