"""A consumer's Prometheus metrics (the normalizer's and the writer's): lag per partition,
commits and batch sizes, read from what the consume loop already knows (no broker round trip)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import NoReturn

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from prometheus_client import Counter, Gauge, Histogram

from services.shared.logging import get_logger

_log = get_logger("poscal.consuming")

CONSUMER_LAG = Gauge(
    "poscal_consumer_lag_records",
    "Records on the partition after the last offset this consumer committed (its highwater, as"
    " the last fetch reported it, minus the committed offset)",
    ["group", "topic", "partition"],
)
CONSUMER_COMMITS = Counter(
    "poscal_consumer_commits",
    "Offset commits that succeeded (each after its records were made durable)",
    ["group"],
)
CONSUMER_RECORDS_COMMITTED = Counter(
    "poscal_consumer_records_committed", "Records whose offsets were committed", ["group"]
)
CONSUMER_BATCH_RECORDS = Histogram(
    "poscal_consumer_batch_records",
    "Records per batch fetched and handed to the handler",
    ["group"],
    buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000),
)


class ConsumerMetrics:
    """One consume loop's metrics, labelled by its consumer group. The lag of a partition is
    its highwater (from the fetch responses aiokafka already read) minus the offset last
    committed here, or, before the first commit, the offset of the first record fetched (where
    the group's committed offset stood), or before any fetch the consumer's position. Updated
    every second (`keep_lag`, beside the loop), for the assigned partitions only, so a
    partition that moved to another consumer leaves no stale series behind."""

    def __init__(
        self, consumer: AIOKafkaConsumer, group: str, *, every_seconds: float = 1.0
    ) -> None:
        self._consumer = consumer
        self._group = group
        self._every = every_seconds
        self._commits = CONSUMER_COMMITS.labels(group)
        self._records_committed = CONSUMER_RECORDS_COMMITTED.labels(group)
        self._batch_records = CONSUMER_BATCH_RECORDS.labels(group)
        self._committed: dict[TopicPartition, int] = {}
        self._lag: dict[TopicPartition, Gauge] = {}

    def fetched(self, batches: Mapping[TopicPartition, Sequence[ConsumerRecord]]) -> None:
        """A batch was fetched: its size, and for a partition not committed here yet, where its
        committed offset is (its first record's: the consumer started there)."""
        total = 0
        for tp, records in batches.items():
            total += len(records)
            if tp not in self._committed:
                self._committed[tp] = records[0].offset
        self._batch_records.observe(total)

    def committed(self, offsets: Mapping[TopicPartition, int], records: int) -> None:
        self._committed.update(offsets)
        self._commits.inc()
        self._records_committed.inc(records)

    async def keep_lag(self) -> NoReturn:
        """Update the lag every `every_seconds` until cancelled: in a task of its own, so it
        stays current while a batch takes long (or hangs), the fetcher still reading ahead."""
        while True:
            try:
                self.update_lag()
            except Exception as exc:  # a metric must never stop the consumer
                _log.warning("cannot update the consumer lag", cause=repr(exc))
            await asyncio.sleep(self._every)

    def update_lag(self) -> None:
        """Set each assigned partition's lag; forget the partitions no longer assigned."""
        assigned = self._consumer.assignment()
        for tp in [tp for tp in self._committed if tp not in assigned]:
            del self._committed[tp]  # another consumer's now: what it commits is unknown here
        for tp in [tp for tp in self._lag if tp not in assigned]:
            del self._lag[tp]
            CONSUMER_LAG.remove(self._group, tp.topic, str(tp.partition))
        for tp in assigned:
            highwater = self._consumer.highwater(tp)
            done = self._committed.get(tp)
            if done is None:
                done = self._position(tp)
            if highwater is None or done is None:
                continue
            gauge = self._lag.get(tp)
            if gauge is None:
                gauge = self._lag[tp] = CONSUMER_LAG.labels(
                    self._group, tp.topic, str(tp.partition)
                )
            gauge.set(max(highwater - done, 0))

    def _position(self, tp: TopicPartition) -> int | None:
        """The consumer's position if it has one (nothing fetched yet: where the group's
        committed offset is), without waiting for it: aiokafka's public `position` waits for
        an offset reset, a round trip."""
        state = self._consumer._subscription.subscription.assignment.state_value(tp)
        return state.position if state is not None and state.has_valid_position else None
