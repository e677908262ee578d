"""Canonical batches in, written to Postgres; offsets are committed by the consume loop only after
the writes have committed."""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg
from aiokafka import ConsumerRecord
from opentelemetry import trace
from opentelemetry.trace import Link, Span
from pydantic import ValidationError

from services.shared.canonical import CanonicalBatch
from services.shared.dead_letters import DeadLetterPublisher, safe_text
from services.shared.errors import PermanentError, TransientError
from services.shared.logging import get_logger
from services.shared.messaging import ending_spans, start_process_span
from services.shared.probes import postgres_answers
from services.writer.failures import Disposition, StopWriting, classify_database_failure
from services.writer.metrics import TransactionTimer, count_written
from services.writer.repository import EventOutcome, JournalRepository

_log = get_logger("poscal.writer")
_tracer = trace.get_tracer("poscal.writer")


class Writer:
    """The writer's batch handler: each consumer batch is written in one transaction when it can
    be, never an event in part.

    When an event in it provokes a failure that is not the database's (see failures.py), the
    batch is split in halves, each written in a transaction of its own, until the event is
    alone: it is dead-lettered, and every other event of the batch is written. A record that is
    no canonical batch is dead-lettered before any write; a failure of the database itself is
    retried by the consume loop (TransientError), and one no retry can fix stops the writer
    (StopWriting)."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        repository: JournalRepository,
        dead_letters: DeadLetterPublisher,
        consumer_group: str,
    ) -> None:
        self._pool = pool
        self._repository = repository
        self._dead_letters = dead_letters
        self._group = consumer_group

    async def handle(self, records: Sequence[ConsumerRecord]) -> None:
        parsed: list[tuple[ConsumerRecord, CanonicalBatch]] = []
        for record in records:
            try:
                parsed.append((record, CanonicalBatch.model_validate_json(record.value or b"")))
            except ValidationError as exc:
                await self._dead_letters.reject(record, "invalid_canonical_batch", str(exc))
            except Exception as exc:  # e.g. nested too deeply to validate
                detail = f"{type(exc).__name__}: {safe_text(str(exc), 1000)}"
                await self._dead_letters.reject(record, "invalid_canonical_batch", detail)
        if not parsed:
            return
        with ending_spans(
            [start_process_span(record, self._group) for record, _ in parsed]
        ) as spans:
            await self._write(parsed, spans)

    async def _write(
        self, parsed: list[tuple[ConsumerRecord, CanonicalBatch]], spans: list[Span]
    ) -> None:
        # One span for the batch's writes (its queries are the asyncpg instrumentation's spans
        # under it), linked to the span of each record it writes.
        with _tracer.start_as_current_span(
            "write canonical batch",
            links=[Link(span.get_span_context()) for span in spans],
            attributes={"poscal.batch_size": len(parsed)},
        ):
            outcomes = await self._apply_isolating(parsed)
        by_event = {o.event_id: o for o in outcomes}
        written: list[tuple[CanonicalBatch, EventOutcome]] = []
        for (_, batch), span in zip(parsed, spans, strict=True):
            outcome = by_event.get(batch.event_id)
            if outcome is not None:
                _annotate(span, outcome)
                written.append((batch, outcome))
        count_written(written)
        tenants = {batch.event_id: batch.connection.user_id for _, batch in parsed}
        for outcome in outcomes:
            self._dead_letters.accepted(tenants[outcome.event_id])
        # One line per batch, never per event: this is the hot path.
        _log.debug(
            "batch applied",
            events=len(outcomes),
            fills_inserted=sum(o.fills_inserted for o in outcomes),
            replays=sum(not o.first_time for o in outcomes),
        )

    async def _apply_isolating(
        self, parsed: list[tuple[ConsumerRecord, CanonicalBatch]]
    ) -> list[EventOutcome]:
        """Apply the events in one transaction; if one of them is refused, apply each half on
        its own (recursively) until the refused event is alone, and dead-letter it."""
        try:
            return await self._apply([batch for _, batch in parsed])
        except EventRefused as exc:
            if len(parsed) > 1:
                middle = len(parsed) // 2
                return await self._apply_isolating(parsed[:middle]) + (
                    await self._apply_isolating(parsed[middle:])
                )
            [(record, batch)] = parsed
            await self._dead_letters.reject(
                record,
                "write_rejected",
                exc.detail,
                str(batch.event_id),
                source=batch.connection.user_id,
            )
            return []

    async def _apply(self, batches: list[CanonicalBatch]) -> list[EventOutcome]:
        timer = TransactionTimer(len(batches))
        try:
            async with self._pool.acquire() as conn:
                outcomes = await self._repository.apply(conn, batches)
        except Exception as exc:
            sqlstate: str | None = getattr(exc, "sqlstate", None)
            disposition = classify_database_failure(exc)
            timer.ended(disposition.value)
            match disposition:
                case Disposition.RETRY:
                    raise TransientError(
                        f"database unavailable: {type(exc).__name__} (SQLSTATE {sqlstate})"
                    ) from exc
                case Disposition.DEAD_LETTER:
                    detail = f"{type(exc).__name__}: {safe_text(str(exc), 2000)}"
                    raise EventRefused(sqlstate, detail) from exc
                case Disposition.STOP:
                    _log.error(
                        "writer stopping: a failure no retry or dead letter can fix; nothing "
                        "committed or dead-lettered, fix the cause and restart",
                        sqlstate=sqlstate,
                        error=type(exc).__name__,
                        detail=safe_text(str(exc), 500),
                    )
                    raise StopWriting(sqlstate, f"{type(exc).__name__}: {exc}") from exc
        timer.ended("committed")
        return outcomes

    async def healthy(self) -> bool:
        """Whether Postgres answers and the dead-letter topic takes letters now: a failure that
        persists while they do is an event's."""
        return await postgres_answers(self._pool) and await self._dead_letters.reachable()

    async def give_up(self, record: ConsumerRecord, reason: str) -> None:
        """Dead-letter an event that kept failing while the database was up."""
        await self._dead_letters.reject(record, "retry_budget_exhausted", reason)


class EventRefused(PermanentError):
    """Applying these events failed because of what one of them holds (see failures.py)."""

    def __init__(self, sqlstate: str | None, detail: str) -> None:
        super().__init__(detail)
        self.sqlstate = sqlstate
        self.detail = detail


def _annotate(span: Span, outcome: EventOutcome) -> None:
    span.set_attributes(
        {
            "poscal.event_id": str(outcome.event_id),
            "poscal.fills_inserted": outcome.fills_inserted,
            "poscal.positions_touched": outcome.positions_touched,
            "poscal.balance_applied": outcome.balance_applied,
            "poscal.replay": not outcome.first_time,
        }
    )
