"""The consume loop both consumers share: fetch a batch, let the handler make it durable, then
commit `offset + 1`; transient failures are retried per partition."""

from __future__ import annotations

import asyncio
import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError

from services.shared.backoff import Backoff
from services.shared.consumer_metrics import ConsumerMetrics
from services.shared.errors import TransientError
from services.shared.kafka import next_offsets
from services.shared.logging import get_logger

_log = get_logger("poscal.consuming")


class BatchHandler(Protocol):
    async def handle(self, records: Sequence[ConsumerRecord]) -> None:
        """Make every record's effect durable, or raise TransientError to get them again."""

    async def healthy(self) -> bool:
        """Whether the infrastructure the handler writes to (dead letters included) answers."""

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


@dataclass
class _Failing:
    """A partition failing transiently: how often in a row, since when, and its backoff."""

    since: float
    backoff: Backoff
    count: int = 0
    resume_at: float = 0.0


class _Partitions:
    """The per-partition retry state of one consume loop."""

    def __init__(
        self,
        consumer: AIOKafkaConsumer,
        handler: BatchHandler,
        budget: RetryBudget,
        backoff: Backoff,
        clock: Callable[[], float],
        metrics: ConsumerMetrics | None,
    ) -> None:
        self._consumer = consumer
        self._handler = handler
        self._budget = budget
        self._backoff = backoff
        self._clock = clock
        self._metrics = metrics
        self._failing: dict[TopicPartition, _Failing] = {}

    def resume_due(self) -> None:
        """Resume the paused partitions whose backoff has passed (and are still ours)."""
        now = self._clock()
        assigned = self._consumer.assignment()
        for tp, failing in self._failing.items():
            if failing.resume_at <= now and tp in assigned and tp in self._consumer.paused():
                self._consumer.resume(tp)

    def wait_ms(self, poll_timeout_ms: int) -> int:
        """How long a fetch may wait: never past the next paused partition's resumption."""
        paused = [f.resume_at for f in self._failing.values() if f.resume_at > self._clock()]
        if not paused:
            return poll_timeout_ms
        until = math.ceil((min(paused) - self._clock()) * 1000)
        return max(1, min(poll_timeout_ms, until))

    async def commit(self, records: Sequence[ConsumerRecord]) -> None:
        for tp in {TopicPartition(r.topic, r.partition) for r in records}:
            self._failing.pop(tp, None)
        offsets = next_offsets(records)
        try:
            await self._consumer.commit(offsets)
        except (CommitFailedError, KafkaError) as exc:
            # Partitions moved to another consumer: it will see these records again, and the
            # sinks are idempotent, so redelivery is harmless.
            _log.warning("offset commit failed; records will be redelivered", error=repr(exc))
            return
        if self._metrics is not None:
            self._metrics.committed(offsets, len(records))

    async def failed(
        self, tp: TopicPartition, records: Sequence[ConsumerRecord], error: TransientError
    ) -> None:
        """One partition's records failed transiently: retry them after the partition's own
        backoff, or once its budget is spent while healthy, give up the record that fails."""
        now = self._clock()
        failing = self._failing.setdefault(
            tp, _Failing(since=now, backoff=dataclasses.replace(self._backoff, attempt=0))
        )
        failing.count += 1
        done = 0
        if self._budget.spent(failing.count, now - failing.since) and (
            await self._handler.healthy()
        ):
            done = await _one_by_one(self._handler, records, error)
            if done:
                await self.commit(records[:done])
            if done == len(records):
                return
            failing = self._failing.setdefault(tp, failing)
        delay = failing.backoff.next_delay()
        _log.warning(
            "records failed, retrying their partition",
            error=str(error),
            topic=tp.topic,
            partition=tp.partition,
            retry_in_s=round(delay, 3),
            consecutive_failures=failing.count,
        )
        if tp in self._consumer.assignment():
            self._consumer.seek(tp, records[done].offset)
            self._consumer.pause(tp)
        failing.resume_at = self._clock() + delay


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
    metrics: ConsumerMetrics | None = None,
) -> None:
    """Consume until `stop`: committing is this loop's job, never the handler's, never automatic.

    A batch that fails transiently is handled again one partition at a time: partitions that
    succeed are committed at once, and a partition that fails is paused for its own backoff and
    read again from its first unfinished record, so the other partitions never wait for it. A
    partition that has failed for the whole retry budget while the handler reports its
    infrastructure healthy is failing for one record's sake, not an outage: its records are
    handled one by one and the one still failing is given up (dead-lettered). So no partition
    waits behind one record longer than a real outage's retry budget. Any exception other than
    TransientError ends the loop (and the service) without committing. `metrics`, when given,
    counts commits and batch sizes and keeps each partition's lag.
    """
    partitions = _Partitions(
        consumer, handler, retry_budget or RetryBudget(), backoff or Backoff(), clock, metrics
    )
    lag = None if metrics is None else asyncio.create_task(metrics.keep_lag(), name="lag")
    try:
        await _consume(consumer, handler, stop, partitions, max_records, poll_timeout_ms, metrics)
    finally:
        if lag is not None:
            lag.cancel()
            await asyncio.gather(lag, return_exceptions=True)


async def _consume(
    consumer: AIOKafkaConsumer,
    handler: BatchHandler,
    stop: asyncio.Event,
    partitions: _Partitions,
    max_records: int,
    poll_timeout_ms: int,
    metrics: ConsumerMetrics | None,
) -> None:
    while not stop.is_set():
        partitions.resume_due()
        fetched = await consumer.getmany(
            timeout_ms=partitions.wait_ms(poll_timeout_ms), max_records=max_records
        )
        batches = {tp: records for tp, records in fetched.items() if records}
        if not batches:
            continue
        every = [record for records in batches.values() for record in records]
        if metrics is not None:
            metrics.fetched(batches)
        try:
            await handler.handle(every)
        except TransientError as batch_failure:
            await _partition_by_partition(partitions, handler, batches, batch_failure)
            continue
        await partitions.commit(every)


async def _partition_by_partition(
    partitions: _Partitions,
    handler: BatchHandler,
    batches: dict[TopicPartition, list[ConsumerRecord]],
    batch_failure: TransientError,
) -> None:
    """After a whole batch failed: each partition alone, so the others go on."""
    if len(batches) == 1:
        [(tp, records)] = batches.items()
        await partitions.failed(tp, records, batch_failure)
        return
    for tp, records in batches.items():
        try:
            await handler.handle(records)
        except TransientError as exc:
            await partitions.failed(tp, records, exc)
            continue
        await partitions.commit(records)


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
            try:
                await handler.give_up(
                    record,
                    "still failing after the retry budget while the infrastructure answered: "
                    f"{exc}",
                )
            except TransientError:  # the dead letter could not be sent: an outage after all
                return done
    return len(records)
