"""Canonical batches in, one database transaction per consumer batch; offsets are committed by
the consume loop only after that transaction has committed.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import asyncpg
from aiokafka import ConsumerRecord
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from pydantic import ValidationError

from services.shared.canonical import CanonicalBatch
from services.shared.dead_letters import DeadLetterPublisher
from services.shared.errors import PermanentError, TransientError
from services.shared.logging import get_logger
from services.shared.messaging import start_process_span
from services.writer.failures import Disposition, StopWriting, classify_database_failure
from services.writer.repository import EventOutcome, JournalRepository

_log = get_logger("poscal.writer")
_tracer = trace.get_tracer("poscal.writer")


class Writer:
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
        if not parsed:
            return
        spans = [start_process_span(record, self._group) for record, _ in parsed]
        try:
            await self._write(parsed, spans)
        except BaseException as exc:
            for span in spans:
                span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
            raise
        finally:
            for span in spans:
                span.end()

    async def _write(
        self, parsed: list[tuple[ConsumerRecord, CanonicalBatch]], spans: list[Span]
    ) -> None:
        started = time.time_ns()
        try:
            outcomes = await self._apply([batch for _, batch in parsed])
        except PermanentError:
            # One event poisons the batch: apply them one at a time to find and set it aside.
            outcomes = []
            for record, batch in parsed:
                try:
                    outcomes += await self._apply([batch])
                except PermanentError as exc:
                    await self._dead_letters.reject(
                        record, "write_rejected", str(exc), str(batch.event_id)
                    )
        ended = time.time_ns()
        by_event = {o.event_id: o for o in outcomes}
        for (_, batch), span in zip(parsed, spans, strict=True):
            outcome = by_event.get(batch.event_id)
            db_span = _tracer.start_span(
                "db.transaction apply canonical batch",
                context=trace.set_span_in_context(span),
                kind=SpanKind.CLIENT,
                start_time=started,
                attributes={"db.system.name": "postgresql", "poscal.batch_size": len(parsed)},
            )
            if outcome is not None:
                _annotate(span, outcome)
            db_span.end(end_time=ended)
        for outcome in outcomes:
            self._dead_letters.accepted()
            _log.info("event applied", **_outcome_fields(outcome))

    async def _apply(self, batches: list[CanonicalBatch]) -> list[EventOutcome]:
        try:
            async with self._pool.acquire() as conn:
                return await self._repository.apply(conn, batches)
        except Exception as exc:
            sqlstate: str | None = getattr(exc, "sqlstate", None)
            match classify_database_failure(exc):
                case Disposition.RETRY:
                    raise TransientError(
                        f"database unavailable: {type(exc).__name__} (SQLSTATE {sqlstate})"
                    ) from exc
                case Disposition.DEAD_LETTER:
                    raise PermanentError(f"{type(exc).__name__}: {exc}") from exc
                case Disposition.STOP:
                    _log.error(
                        "writer stopping: a failure no retry or dead letter can fix; nothing "
                        "committed or dead-lettered, fix the cause and restart",
                        sqlstate=sqlstate,
                        error=type(exc).__name__,
                        detail=str(exc)[:500],
                    )
                    raise StopWriting(sqlstate, f"{type(exc).__name__}: {exc}") from exc


def _annotate(span: Span, outcome: EventOutcome) -> None:
    span.set_attribute("poscal.event_id", str(outcome.event_id))
    span.set_attribute("poscal.fills_inserted", outcome.fills_inserted)
    span.set_attribute("poscal.positions_touched", outcome.positions_touched)
    span.set_attribute("poscal.balance_applied", outcome.balance_applied)
    span.set_attribute("poscal.replay", not outcome.first_time)


def _outcome_fields(outcome: EventOutcome) -> dict[str, object]:
    return {
        "event_id": str(outcome.event_id),
        "fills_inserted": outcome.fills_inserted,
        "cash_inserted": outcome.cash_inserted,
        "positions_touched": outcome.positions_touched,
        "balance_applied": outcome.balance_applied,
        "replay": not outcome.first_time,
    }
