"""Group commit: what many concurrent requests hand in is written by one statement, not one each."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, Generic, TypeVar

Item = TypeVar("Item")


class GroupWrites(Generic[Item]):
    """Items handed in are written in batches by `write`: everything handed in during one turn
    of the event loop together, and while `max_in_flight` writes are under way, everything
    handed in meanwhile together once one of them ends. An idle writer starts at once (no
    window to wait out); a busy one makes its batches larger instead of its writes more, so
    under load the database sees fewer, larger statements.

    `write` must deal with every item of its batch itself (answer it, or log it): an exception
    it lets out ends that write, and is raised nowhere else."""

    def __init__(
        self,
        write: Callable[[list[Item]], Coroutine[Any, Any, None]],
        *,
        max_in_flight: int = 1,
    ) -> None:
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1")
        self._write = write
        self._max_in_flight = max_in_flight
        self._pending: list[Item] = []
        self._scheduled = False
        self._writes: set[asyncio.Task[None]] = set()

    @property
    def pending(self) -> int:
        """Items handed in whose write has not started."""
        return len(self._pending)

    def add(self, item: Item) -> None:
        self._pending.append(item)
        if not self._scheduled and len(self._writes) < self._max_in_flight:
            # After every item of this loop turn is in.
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._start)

    async def drain(self) -> None:
        """Wait until everything handed in so far is written (at shutdown, or in a spec)."""
        while self._writes or self._pending:
            if self._writes:
                await asyncio.gather(*self._writes, return_exceptions=True)
            else:
                await asyncio.sleep(0)  # a start is scheduled: let it run

    def _start(self) -> None:
        self._scheduled = False
        if not self._pending or len(self._writes) >= self._max_in_flight:
            return
        batch, self._pending = self._pending, []
        task = asyncio.get_running_loop().create_task(self._write(batch))
        self._writes.add(task)
        task.add_done_callback(self._ended)

    def _ended(self, task: asyncio.Task[None]) -> None:
        self._writes.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: `write` answers its own items
        if self._pending and not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._start)
