"""The dead-letter topic's contract, and the budget that stops a bad deploy dead-lettering all."""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from typing import Any, Literal

from aiokafka import AIOKafkaProducer, ConsumerRecord
from pydantic import AwareDatetime, BaseModel, ConfigDict

from services.shared.errors import PermanentError, TransientError
from services.shared.logging import get_logger

Stage = Literal["normalizer", "writer"]
_log = get_logger("poscal.dead_letters")


class DeadLetter(BaseModel):
    """A message that could not be processed, with why, and exactly where it came from."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: Literal[1] = 1
    stage: Stage
    reason_code: str
    reason: str
    failed_at: AwareDatetime
    topic: str
    partition: int
    offset: int
    key: str | None
    event_id: str | None = None
    item: Any = None
    value_b64: str


class DeadLetterBudgetExceeded(PermanentError):
    """Too many consecutive invalid messages: more likely our bug than bad input, so stop."""


class DeadLetterBudget:
    """Counts consecutive dead letters; any good message resets the count."""

    def __init__(self, max_consecutive: int) -> None:
        self._max = max_consecutive
        self._consecutive = 0

    def record_valid(self) -> None:
        self._consecutive = 0

    def record_invalid(self) -> None:
        self._consecutive += 1
        if self._consecutive > self._max:
            raise DeadLetterBudgetExceeded(
                f"{self._consecutive} consecutive invalid messages (limit {self._max}); "
                "stopping without committing so a fix can reprocess them"
            )


class DeadLetterPublisher:
    """Sends dead letters (acknowledged before returning) and keeps the budget of a consumer."""

    def __init__(
        self, producer: AIOKafkaProducer, topic: str, stage: Stage, budget: DeadLetterBudget
    ) -> None:
        self._producer = producer
        self._topic = topic
        self._stage = stage
        self._budget = budget

    async def reject(
        self, record: ConsumerRecord, reason_code: str, reason: str, event_id: str | None = None
    ) -> None:
        """Set a whole message aside: log it, dead-letter it, count it against the budget."""
        _log.warning(
            "message dead-lettered",
            stage=self._stage,
            reason_code=reason_code,
            reason=reason[:500],
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
        )
        await self.publish(record, reason_code, reason, event_id=event_id)
        self._budget.record_invalid()

    def accepted(self) -> None:
        """A message was processed: the run of invalid ones is over."""
        self._budget.record_valid()

    async def publish(
        self,
        record: ConsumerRecord,
        reason_code: str,
        reason: str,
        *,
        event_id: str | None = None,
        item: Any = None,
    ) -> None:
        letter = DeadLetter(
            stage=self._stage,
            reason_code=reason_code,
            reason=reason[:4000],
            failed_at=datetime.now(UTC),
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            key=record.key.decode("utf-8", "replace") if record.key is not None else None,
            event_id=event_id,
            item=item,
            value_b64=base64.b64encode(record.value or b"").decode("ascii"),
        )
        headers = [*(record.headers or ()), ("poscal-reason-code", reason_code.encode())]
        try:
            await self._producer.send_and_wait(
                self._topic, letter.model_dump_json().encode(), key=record.key, headers=headers
            )
        except Exception as exc:
            raise TransientError(f"dead letter not acknowledged: {type(exc).__name__}") from exc
