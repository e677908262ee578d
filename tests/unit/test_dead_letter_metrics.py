"""Each dead letter sent counts once under its stage and reason code; a code that is not one of
ours cannot mint a label value."""

from __future__ import annotations

from typing import Any

import pytest
from aiokafka.structs import RecordMetadata

from services.normalizer.pipeline import Normalizer
from services.shared.dead_letters import DeadLetterBudget, DeadLetterPublisher, reason_label
from services.shared.errors import TransientError
from tests.support.metrics import sample
from tests.support.producers import FakeProducer
from tests.support.records import consumer_record

LETTERS = "poscal_dead_letters_total"


def normalizer(producer: FakeProducer) -> Normalizer:
    letters = DeadLetterPublisher(producer, "poscal.dead", "normalizer", DeadLetterBudget(100))
    return Normalizer(producer, "poscal.canonical", letters, "poscal-normalizer")


async def test_a_dead_letter_counts_under_its_stage_and_reason_code() -> None:
    before = sample(LETTERS, stage="normalizer", reason="invalid_envelope")
    producer = FakeProducer()
    await normalizer(producer).handle(
        [consumer_record(b"not an envelope", offset=0), consumer_record(b"{}", offset=1)]
    )
    assert len(producer.sent["poscal.dead"]) == 2
    assert sample(LETTERS, stage="normalizer", reason="invalid_envelope") == before + 2


async def test_a_record_set_aside_again_after_a_retry_is_not_counted_again() -> None:
    producer = FakeProducer()
    handler = normalizer(producer)
    record = consumer_record(b"garbage", offset=7)
    before = sample(LETTERS, stage="normalizer", reason="invalid_envelope")
    await handler.handle([record])
    await handler.handle([record])
    assert sample(LETTERS, stage="normalizer", reason="invalid_envelope") == before + 1


class RefusingProducer(FakeProducer):
    """A broker that acknowledges no dead letter."""

    async def send_and_wait(
        self, topic: str, value: bytes, key: bytes | None = None, headers: Any = None
    ) -> RecordMetadata:
        raise ConnectionError("broker unreachable")


async def test_a_letter_that_is_not_acknowledged_is_not_counted() -> None:
    letters = DeadLetterPublisher(RefusingProducer(), "poscal.dead", "writer", DeadLetterBudget(9))
    before = sample(LETTERS, stage="writer", reason="write_rejected")
    with pytest.raises(TransientError):  # the letter goes again with its batch
        await letters.reject(consumer_record(b"x"), "write_rejected", "refused")
    assert sample(LETTERS, stage="writer", reason="write_rejected") == before


def test_reason_codes_are_labels_only_when_they_are_identifiers() -> None:
    assert reason_label("rejected_items") == "rejected_items"
    assert reason_label("mapper_error") == "mapper_error"
    for unexpected in ("", "Bad Code", "x" * 65, "drop table;", "invalid-deal", "ünicode"):
        assert reason_label(unexpected) == "other"
