"""The writer's Prometheus metrics, served on POSCAL_WRITER_METRICS_PORT when set. Counted once
per transaction and per broker, never per record through a label lookup: this is the hot path."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache

from prometheus_client import Counter, Histogram

from services.shared.canonical import CanonicalBatch
from services.writer.repository import EventOutcome

TRANSACTION_SECONDS = Histogram(
    "poscal_writer_transaction_duration_seconds",
    "Time from taking a database connection to the end of a batch's transaction, by outcome"
    " (committed; dead_letter: an event in it was refused, so the batch is halved; retry: the"
    " database failed; stop: a failure no retry fixes)",
    ["outcome"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
BATCH_EVENTS = Histogram(
    "poscal_writer_batch_events",
    "Events written per committed transaction",
    buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000),
)
EVENTS_WRITTEN = Counter(
    "poscal_writer_events_written",
    "Events committed to the journal, by broker; replays (an event id already recorded) too",
    ["broker", "replay"],
)
FILLS_WRITTEN = Counter(
    "poscal_writer_fills_written", "Fills inserted into the journal (new ones only)", ["broker"]
)
CASH_MOVEMENTS_WRITTEN = Counter(
    "poscal_writer_cash_movements_written",
    "Cash movements inserted into the journal (new ones only)",
    ["broker"],
)
SYNC_DELAY = Histogram(
    "poscal_writer_sync_delay_seconds",
    "From an event's receipt (ingest accepting the webhook, the poller fetching the page) to its"
    " write committing, by broker",
    ["broker"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800),
)


@dataclass(frozen=True)
class _BrokerSeries:
    """One broker's children, looked up once per process."""

    new: Counter
    replay: Counter
    fills: Counter
    cash: Counter
    delay: Histogram


@cache
def _series(broker: str) -> _BrokerSeries:
    return _BrokerSeries(
        EVENTS_WRITTEN.labels(broker, "false"),
        EVENTS_WRITTEN.labels(broker, "true"),
        FILLS_WRITTEN.labels(broker),
        CASH_MOVEMENTS_WRITTEN.labels(broker),
        SYNC_DELAY.labels(broker),
    )


def count_written(
    written: Iterable[tuple[CanonicalBatch, EventOutcome]], committed_at: datetime | None = None
) -> None:
    """Count what one batch wrote: events, new fills and cash movements per broker, and each
    event's delay from its receipt."""
    now = committed_at or datetime.now(UTC)
    totals: dict[str, list[int]] = {}
    for batch, outcome in written:
        broker = batch.connection.broker
        series = _series(broker)
        series.delay.observe(max((now - batch.received_at).total_seconds(), 0.0))
        counts = totals.setdefault(broker, [0, 0, 0, 0])
        counts[0 if outcome.first_time else 1] += 1
        counts[2] += outcome.fills_inserted
        counts[3] += outcome.cash_inserted
    for broker, (new, replays, fills, cash) in totals.items():
        series = _series(broker)
        series.new.inc(new)
        series.replay.inc(replays)
        series.fills.inc(fills)
        series.cash.inc(cash)


class TransactionTimer:
    """Times one transaction of the writer and counts its outcome."""

    def __init__(self, events: int) -> None:
        self._events = events
        self._started = time.perf_counter()

    def ended(self, outcome: str) -> None:
        TRANSACTION_SECONDS.labels(outcome).observe(time.perf_counter() - self._started)
        if outcome == "committed":
            BATCH_EVENTS.observe(self._events)
