"""The normalizer sets bad input aside one dead letter per raw event, passes on what is valid,
and ends the span of every send it started, however the batch ends.

Run against a hand-written producer that keeps what is sent and settles deliveries when the
test says; the same behaviour against the real broker is in tests/integration.
"""

from __future__ import annotations

import asyncio
import base64
import uuid
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from aiokafka import ConsumerRecord
from aiokafka.structs import RecordMetadata
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from services.devstack.demo import encode_body
from services.normalizer.pipeline import REJECTED_ITEMS, Normalizer, describe_rejections
from services.shared.brokers import MappedEvent, Rejection
from services.shared.canonical import CanonicalBatch
from services.shared.dead_letters import (
    DeadLetter,
    DeadLetterBudget,
    DeadLetterBudgetExceeded,
    DeadLetterPublisher,
)
from services.shared.envelope import RawEvent
from services.shared.errors import TransientError
from tests.support.builders import PINNED_CONNECTION, PINNED_LOGIN, fixture_deals, mt5_body
from tests.support.producers import FakeProducer
from tests.support.records import consumer_record

LOGIN = PINNED_LOGIN
CONNECTION = PINNED_CONNECTION


def deal(**changes: Any) -> dict[str, Any]:
    return {**fixture_deals()[0], **changes}


def raw_record(body: bytes, offset: int = 0) -> ConsumerRecord:
    event = RawEvent.wrap(
        source="webhook",
        connection=CONNECTION,
        received_at=datetime(2024, 6, 4, 9, 0, 5, tzinfo=UTC),
        delivery_id=f"msg_{offset}_{uuid.uuid4().hex}",
        body=body,
    )
    value = event.model_dump_json().encode()
    return consumer_record(value, offset=offset, key=str(CONNECTION.connection_id).encode())


def webhook(deals: list[dict[str, Any]], offset: int = 0) -> ConsumerRecord:
    return raw_record(encode_body(mt5_body(LOGIN, deals)), offset)


def three_bad_among(valid: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The valid deals at even places, with bad ones at indexes 1, 3 and 5."""
    bad = [
        deal(ticket=990001, volume="lots"),
        deal(ticket=990002, type=99),
        deal(ticket=990003, volume="lots"),
    ]
    return [d for pair in zip(valid, bad, strict=True) for d in pair]


def normalizer(
    producer: FakeProducer, *, budget: int = 100, max_bytes: int | None = None
) -> Normalizer:
    extra = {} if max_bytes is None else {"max_bytes": max_bytes}
    letters = DeadLetterPublisher(
        producer, "poscal.dead", "normalizer", DeadLetterBudget(budget), **extra
    )
    return Normalizer(producer, "poscal.canonical", letters, "poscal-normalizer")


def dead_letters(producer: FakeProducer) -> list[DeadLetter]:
    return [DeadLetter.model_validate_json(v) for v in producer.sent.get("poscal.dead", [])]


def canonical(producer: FakeProducer) -> list[CanonicalBatch]:
    return [
        CanonicalBatch.model_validate_json(v) for v in producer.sent.get("poscal.canonical", [])
    ]


async def test_an_event_with_several_bad_deals_is_one_dead_letter_listing_them_all() -> None:
    producer = FakeProducer()
    record = webhook(three_bad_among(fixture_deals()))
    await normalizer(producer).handle([record])
    [letter] = dead_letters(producer)
    assert letter.reason_code == REJECTED_ITEMS
    assert letter.reason == "3 items rejected (3 mapped): invalid_deal x2, unknown_deal_type x1"
    assert letter.rejected_count == 3 and letter.rejections_truncated is False
    assert [(r.index, r.code) for r in letter.rejections] == [
        (1, "invalid_deal"),
        (3, "unknown_deal_type"),
        (5, "invalid_deal"),
    ]
    assert [r.item["ticket"] for r in letter.rejections] == [990001, 990002, 990003]
    assert letter.rejections[0].detail.startswith("volume")


async def test_the_dead_letter_carries_the_raw_record_once() -> None:
    producer = FakeProducer()
    record = webhook(three_bad_among(fixture_deals()))
    await normalizer(producer).handle([record])
    [letter] = dead_letters(producer)
    assert base64.b64decode(letter.value_b64) == record.value
    assert (letter.topic, letter.partition, letter.offset) == ("poscal.raw", 0, 0)
    assert letter.model_dump_json().count(letter.value_b64) == 1


async def test_the_valid_deals_beside_the_bad_ones_still_go_to_the_canonical_topic() -> None:
    producer = FakeProducer()
    await normalizer(producer).handle([webhook(three_bad_among(fixture_deals()))])
    [batch] = canonical(producer)
    assert [f.broker_ref for f in batch.fills] == [str(d["ticket"]) for d in fixture_deals()]


async def test_a_whole_event_rejection_stays_one_dead_letter_without_item_rejections() -> None:
    producer = FakeProducer()
    await normalizer(producer).handle([raw_record(b'{"account": "truncated')])
    [letter] = dead_letters(producer)
    assert letter.reason_code == "malformed_json"
    assert (letter.rejected_count, letter.rejections) == (0, ())
    assert canonical(producer) == []


async def test_the_budget_counts_an_event_of_many_bad_deals_once() -> None:
    producer = FakeProducer()
    many_bad = [deal(ticket=990000 + i, volume="lots") for i in range(50)]
    await normalizer(producer, budget=1).handle([webhook(many_bad)])
    assert len(dead_letters(producer)) == 1


async def test_consecutive_events_with_bad_deals_spend_the_budget_one_each() -> None:
    producer = FakeProducer()
    bad = [deal(ticket=990001, volume="lots")]
    with pytest.raises(DeadLetterBudgetExceeded):
        await normalizer(producer, budget=2).handle([webhook(bad, offset) for offset in range(3)])
    assert len(dead_letters(producer)) == 3


async def test_a_fully_mapped_event_resets_the_budget() -> None:
    producer = FakeProducer()
    bad, good = [deal(ticket=990001, volume="lots")], fixture_deals()
    records = [webhook(d, offset) for offset, d in enumerate([bad, good, bad, good, bad])]
    await normalizer(producer, budget=1).handle(records)
    assert len(dead_letters(producer)) == 3
    assert len(canonical(producer)) == 5


async def test_a_dead_letter_too_large_for_the_topic_lists_the_rejections_that_fit() -> None:
    producer = FakeProducer()
    many_bad = [deal(ticket=990000 + i, volume="lots", comment="x" * 200) for i in range(200)]
    record = webhook(many_bad)
    max_bytes = 2 * len(record.value)  # room for the raw copy (4/3 of it) and some rejections
    await normalizer(producer, max_bytes=max_bytes).handle([record])
    [sent] = producer.sent["poscal.dead"]
    letter = DeadLetter.model_validate_json(sent)
    assert len(sent) <= max_bytes
    assert letter.rejections_truncated is True
    assert 0 < len(letter.rejections) < 200 and letter.rejected_count == 200
    assert letter.reason.startswith("200 items rejected (0 mapped)")


def test_the_reason_counts_the_rejections_by_code_most_frequent_first() -> None:
    batch = CanonicalBatch.model_validate(
        {
            "event_id": str(uuid.uuid4()),
            "source": "webhook",
            "connection": orjson.loads(CONNECTION.model_dump_json()),
            "received_at": "2024-06-04T09:00:05Z",
            "account": {"balance": "1000", "as_of": "2024-06-04T09:00:05Z"},
        }
    )
    rejected = tuple(
        Rejection(code, "why", index, None)
        for index, code in enumerate(["b_code", "a_code", "b_code", "c_code", "a_code", "b_code"])
    )
    assert describe_rejections(MappedEvent(batch, rejected)) == (
        "6 items rejected (0 mapped): b_code x3, a_code x2, c_code x1"
    )


def send_spans(spans: InMemorySpanExporter) -> list[ReadableSpan]:
    return [s for s in spans.get_finished_spans() if s.name == "send poscal.canonical"]


async def test_a_batch_failing_part_way_still_ends_the_spans_of_the_sends_it_started(
    spans: InMemorySpanExporter,
) -> None:
    spans.clear()
    producer = FakeProducer(deliveries="held", refuse_after=2)
    good = [webhook(fixture_deals(), offset) for offset in range(3)]
    with pytest.raises(TransientError, match="not enqueued"):
        await normalizer(producer).handle(good)
    assert len(producer.held) == 2
    first, second = producer.held
    first.set_result(RecordMetadata("poscal.canonical", 4, None, 17, 0, 0, 0))
    second.set_exception(ConnectionError("broker went away"))
    await asyncio.sleep(0)  # deliveries settle through the event loop
    # The first acknowledged, the second failed in delivery, the third refused when sent.
    ok, *failed = sorted(send_spans(spans), key=lambda s: s.status.status_code != StatusCode.UNSET)
    assert ok.status.status_code == StatusCode.UNSET
    assert ok.attributes is not None and ok.attributes["messaging.kafka.offset"] == 17
    assert [(s.status.status_code, s.status.description) for s in failed] == [
        (StatusCode.ERROR, "ConnectionError")
    ] * 2


async def test_a_send_the_producer_refuses_ends_its_span_with_an_error(
    spans: InMemorySpanExporter,
) -> None:
    spans.clear()
    with pytest.raises(TransientError, match="not enqueued"):
        await normalizer(FakeProducer(refuse_send=True)).handle([webhook(fixture_deals())])
    [span] = send_spans(spans)
    assert span.status.status_code == StatusCode.ERROR


async def test_an_unacknowledged_send_fails_the_batch_and_ends_its_span_with_an_error(
    spans: InMemorySpanExporter,
) -> None:
    spans.clear()
    producer = FakeProducer(deliveries="failed")
    with pytest.raises(TransientError, match="not acknowledged"):
        await normalizer(producer).handle([webhook(fixture_deals())])
    await asyncio.sleep(0)  # deliveries settle through the event loop
    [span] = send_spans(spans)
    assert span.status.status_code == StatusCode.ERROR
    assert span.status.description == "TimeoutError"
