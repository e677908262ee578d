"""The normalizer dead-letters whatever one record's content causes, at every step, and fails a
batch (to be retried) only when the broker cannot take what it sends.

Against a hand-written producer; the same against the real broker is in tests/integration.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from aiokafka.errors import KafkaTimeoutError, MessageSizeTooLargeError, RecordTooLargeError

from services.devstack.demo import encode_body
from services.normalizer.pipeline import Normalizer
from services.shared.dead_letters import DeadLetter, DeadLetterBudget, DeadLetterPublisher
from services.shared.envelope import RawEvent
from services.shared.errors import TransientError
from tests.support.builders import PINNED_CONNECTION, PINNED_LOGIN, fixture_deals, mt5_body
from tests.support.producers import FakeProducer
from tests.support.records import consumer_record


def normalizer(producer: FakeProducer, **options: int) -> Normalizer:
    letters = DeadLetterPublisher(producer, "poscal.dead", "normalizer", DeadLetterBudget(100))
    return Normalizer(producer, "poscal.canonical", letters, "poscal-normalizer", **options)


def webhook_record(offset: int = 0) -> bytes:
    event = RawEvent.wrap(
        source="webhook",
        connection=PINNED_CONNECTION,
        received_at=datetime.now(UTC),
        delivery_id=f"msg_{offset}",
        body=encode_body(mt5_body(PINNED_LOGIN, fixture_deals())),
    )
    return event.model_dump_json().encode()


def letters(producer: FakeProducer) -> list[DeadLetter]:
    return [DeadLetter.model_validate_json(v) for v in producer.sent.get("poscal.dead", [])]


@pytest.mark.parametrize(
    "value",
    [
        b'{"schema_version": 1, "event_id": ' + b"[" * 5000 + b"]" * 5000 + b"}",
        b'{"body_b64": "\\ud800"}',
        b"\xff\xfe not even UTF-8",
    ],
    ids=["nested", "surrogate", "bytes"],
)
async def test_an_envelope_nothing_can_read_is_dead_lettered_and_the_next_record_goes_on(
    value: bytes,
) -> None:
    producer = FakeProducer()
    records = [consumer_record(value, offset=0), consumer_record(webhook_record(1), offset=1)]
    await normalizer(producer).handle(records)
    [letter] = letters(producer)
    assert (letter.offset, letter.reason_code) == (0, "invalid_envelope")
    assert len(producer.sent["poscal.canonical"]) == 1


async def test_a_canonical_batch_too_large_to_send_is_dead_lettered() -> None:
    producer = FakeProducer()
    await normalizer(producer, max_message_bytes=1000).handle([consumer_record(webhook_record())])
    [letter] = letters(producer)
    assert letter.reason_code == "canonical_too_large"
    assert "poscal.canonical" not in producer.sent


@pytest.mark.parametrize(
    "error", [MessageSizeTooLargeError(), RecordTooLargeError()], ids=lambda e: type(e).__name__
)
async def test_a_batch_the_producer_refuses_for_its_size_is_dead_lettered_not_retried(
    error: Exception,
) -> None:
    producer = FakeProducer(refuse_send=True, send_error=error)
    await normalizer(producer).handle([consumer_record(webhook_record())])
    [letter] = letters(producer)
    assert letter.reason_code == "canonical_refused"


async def test_a_batch_the_broker_refuses_for_its_size_is_dead_lettered_not_retried() -> None:
    producer = FakeProducer(deliveries="failed", delivery_error=MessageSizeTooLargeError())
    await normalizer(producer).handle([consumer_record(webhook_record())])
    [letter] = letters(producer)
    assert letter.reason_code == "canonical_refused"


async def test_a_broker_that_cannot_deliver_fails_the_batch_to_be_retried() -> None:
    producer = FakeProducer(deliveries="failed", delivery_error=KafkaTimeoutError())
    with pytest.raises(TransientError):
        await normalizer(producer).handle([consumer_record(webhook_record())])
    assert letters(producer) == []


async def test_a_record_dead_lettered_once_is_not_sent_again_when_its_batch_returns() -> None:
    producer = FakeProducer(deliveries="failed")
    budget = DeadLetterBudget(max_consecutive=1)
    letters_out = DeadLetterPublisher(producer, "poscal.dead", "normalizer", budget)
    normalizer = Normalizer(producer, "poscal.canonical", letters_out, "poscal-normalizer")
    batch = [consumer_record(b"garbage", offset=0), consumer_record(webhook_record(1), offset=1)]
    with pytest.raises(TransientError):  # the valid record's delivery failed: retried
        await normalizer.handle(batch)
    producer.deliver_from_now_on()
    await normalizer.handle(batch)  # the retry: the budget of 1 is not spent by the same letter
    assert [x.offset for x in letters(producer)] == [0]
