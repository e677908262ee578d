"""Group commit: an idle writer writes at once, a busy one gathers what arrives meanwhile into its
next batch, never more writes at once than allowed, and nothing handed in is left unwritten."""

from __future__ import annotations

import asyncio

import pytest

from services.ingest.group_writes import GroupWrites


class HeldWrites:
    """A `write` that records each batch and holds it until released."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.in_flight = 0
        self.most_in_flight = 0
        self._release = asyncio.Event()
        self._started = asyncio.Event()

    async def write(self, batch: list[str]) -> None:
        self.batches.append(batch)
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        self._started.set()
        try:
            await self._release.wait()
        finally:
            self.in_flight -= 1

    async def started(self) -> None:
        await self._started.wait()
        self._started.clear()

    def release(self) -> None:
        self._release.set()


async def test_what_arrives_in_one_loop_turn_is_one_batch() -> None:
    held = HeldWrites()
    held.release()
    writes = GroupWrites(held.write)
    for item in "abc":
        writes.add(item)
    await writes.drain()
    assert held.batches == [["a", "b", "c"]]


async def test_what_arrives_while_a_write_is_under_way_goes_in_the_next_batch_together() -> None:
    held = HeldWrites()
    writes = GroupWrites(held.write, max_in_flight=1)
    writes.add("first")
    await held.started()
    for item in ("second", "third", "fourth"):
        writes.add(item)
        await asyncio.sleep(0)  # each in a loop turn of its own
    assert writes.pending == 3
    held.release()
    await writes.drain()
    assert held.batches == [["first"], ["second", "third", "fourth"]]
    assert held.most_in_flight == 1


async def test_up_to_max_in_flight_writes_run_at_once_and_no_more() -> None:
    held = HeldWrites()
    writes = GroupWrites(held.write, max_in_flight=2)
    writes.add("a")
    await held.started()
    writes.add("b")
    await held.started()
    writes.add("c")
    writes.add("d")
    await asyncio.sleep(0)
    assert (held.in_flight, writes.pending) == (2, 2)
    held.release()
    await writes.drain()
    assert held.batches == [["a"], ["b"], ["c", "d"]]
    assert held.most_in_flight == 2


async def test_a_write_that_fails_costs_no_later_batch() -> None:
    batches: list[list[int]] = []

    async def write(batch: list[int]) -> None:
        batches.append(batch)
        if batch == [1]:
            raise RuntimeError("the database went away")

    writes = GroupWrites(write)
    writes.add(1)
    await writes.drain()
    writes.add(2)
    await writes.drain()
    assert batches == [[1], [2]]


def test_at_least_one_write_must_be_allowed() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        GroupWrites(HeldWrites().write, max_in_flight=0)
