"""The consume loop both consumers share: fetch a batch, let the handler make it durable, then
commit `offset + 1`. Committing is this loop's job, never the handler's, and never automatic.

A batch that fails transiently is retried (rewound, after a backoff) for as long as the
infrastructure is down. Once it has failed for the whole retry budget while the handler reports
its infrastructure healthy, the failure is no outage: the batch is retried record by record, and
a record that still fails alone is given up (dead-lettered), so no partition waits behind one
record longer than a real outage's retry budget.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError

from services.shared.backoff import Backoff
from services.shared.errors import TransientError
from services.shared.kafka import next_offsets
from services.shared.logging import get_logger

_log = get_logger("poscal.consuming")


class BatchHandler(Protocol):
    async def handle(self, records: Sequence[ConsumerRecord]) -> None:
        """Make every record's effect durable, or raise TransientError to get them again."""

    async def healthy(self) -> bool:
        """Whether the infrastructure the handler writes to answers now."""

    async def give_up(self, record: ConsumerRecord, reason: str) -> None:
        """Set aside (dead-letter) a record that keeps failing while all else is healthy."""


@dataclass(frozen=True)
class RetryBudget:
    """How long transient failures are retried before they are taken for a record's own:
    at least `attempts` failures in a row over at least `seconds`."""

    attempts: int = 20
    seconds: float = 300.0

    def spent(self, failures: int, failing_for_seconds: float) -> bool:
        return failures >= self.attempts and failing_for_seconds >= self.seconds


def _rewind(consumer: AIOKafkaConsumer, records: Sequence[ConsumerRecord]) -> None:
    first: dict[TopicPartition, int] = {}
    for record in records:
        tp = TopicPartition(record.topic, record.partition)
        first[tp] = min(first.get(tp, record.offset), record.offset)
    assigned = consumer.assignment()
    for tp, offset in first.items():
        if tp in assigned:
            consumer.seek(tp, offset)


class _Failures:
    """Consecutive transient failures, and since when."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self.count = 0
        self._since: float | None = None

    def add(self) -> None:
        self.count += 1
        if self._since is None:
            self._since = self._clock()

    def seconds(self) -> float:
        return 0.0 if self._since is None else self._clock() - self._since

    def reset(self) -> None:
        self.count, self._since = 0, None


async def consume_batches(
    consumer: AIOKafkaConsumer,
    handler: BatchHandler,
    stop: asyncio.Event,
    *,
    max_records: int,
    poll_timeout_ms: int = 250,
    backoff: Backoff | None = None,
    retry_budget: RetryBudget | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> None:
    backoff = backoff or Backoff()
    budget = retry_budget or RetryBudget()
    failures = _Failures(clock)
    while not stop.is_set():
        fetched = await consumer.getmany(timeout_ms=poll_timeout_ms, max_records=max_records)
        records = [record for batch in fetched.values() for record in batch]
        if not records:
            continue
        try:
            await handler.handle(records)
        except TransientError as exc:
            failures.add()
            if budget.spent(failures.count, failures.seconds()) and await handler.healthy():
                done = await _one_by_one(handler, records, exc)
                if done < len(records):  # the infrastructure went away after all
                    _rewind(consumer, records[done:])
                    await asyncio.sleep(backoff.next_delay())
                if done == 0:
                    continue
                records = records[:done]
            else:
                delay = backoff.next_delay()
                _log.warning(
                    "batch failed, retrying",
                    error=str(exc),
                    retry_in_s=round(delay, 3),
                    consecutive_failures=failures.count,
                )
                _rewind(consumer, records)
                await asyncio.sleep(delay)
                continue
        failures.reset()
        backoff.reset()
        try:
            await consumer.commit(next_offsets(records))
        except (CommitFailedError, KafkaError) as exc:
            # Partitions moved to another consumer: it will see these records again, and the
            # sinks are idempotent, so redelivery is harmless.
            _log.warning("offset commit failed; records will be redelivered", error=repr(exc))


async def _one_by_one(
    handler: BatchHandler, records: Sequence[ConsumerRecord], batch_failure: Exception
) -> int:
    """Handle each record alone, in order; give up one that fails alone while the handler's
    infrastructure stays healthy. Returns how many records are done (handled or given up):
    fewer than all when the infrastructure went away meanwhile (the rest are retried later)."""
    _log.warning(
        "retry budget spent while healthy; isolating the failing record",
        error=str(batch_failure),
        records=len(records),
    )
    for done, record in enumerate(records):
        try:
            await handler.handle([record])
        except TransientError as exc:
            if not await handler.healthy():
                return done
            _log.error(
                "record gave up after its retry budget; dead-lettered",
                topic=record.topic,
                partition=record.partition,
                offset=record.offset,
                error=str(exc),
            )
            await handler.give_up(
                record,
                f"still failing after the retry budget while the infrastructure answered: {exc}",
            )
    return len(records)
