"""A dead letter always fits the topic: rejections are cut to fit, never the letter refused."""

from __future__ import annotations

import base64
from datetime import UTC, datetime

import pytest
from aiokafka import ConsumerRecord

from services.shared.dead_letters import (
    MAX_DEAD_LETTER_BYTES,
    DeadLetter,
    ItemRejection,
    dead_letter,
    fit_to_size,
)
from tests.support.records import consumer_record

KAFKA_DEFAULT_MAX_MESSAGE_BYTES = 1024 * 1024
FAILED_AT = datetime(2024, 6, 4, 9, 0, 5, tzinfo=UTC)


def record(value: bytes) -> ConsumerRecord:
    return consumer_record(value, partition=2, offset=41)


def rejections(count: int, item_bytes: int = 300) -> list[ItemRejection]:
    return [
        ItemRejection(
            index=i,
            code="invalid_deal",
            detail="volume: Input should be a valid decimal",
            item=_item(i, item_bytes),
        )
        for i in range(count)
    ]


def _item(ticket: int, size: int) -> dict[str, object]:
    """An item of about `size` bytes, in fields short enough to be kept whole."""
    chunks, rest = divmod(size, 1000)
    return {"ticket": ticket, "comment": "x" * rest} | {
        f"note{n}": "x" * 1000 for n in range(chunks)
    }


def letter(value: bytes, rejected: list[ItemRejection]) -> DeadLetter:
    return dead_letter(
        record(value),
        stage="normalizer",
        reason_code="rejected_items",
        reason=f"{len(rejected)} items rejected (0 mapped): invalid_deal x{len(rejected)}",
        failed_at=FAILED_AT,
        event_id="5f0c7d1e-0000-4000-8000-000000000001",
        rejections=rejected,
    )


def size(letter: DeadLetter) -> int:
    return len(letter.model_dump_json().encode())


def test_the_limit_leaves_headroom_under_kafkas_default_message_size() -> None:
    assert 0 < MAX_DEAD_LETTER_BYTES <= KAFKA_DEFAULT_MAX_MESSAGE_BYTES - 32 * 1024


def test_a_letter_carries_its_message_once_and_counts_its_rejections() -> None:
    value = b'{"raw": "event"}'
    built = letter(value, rejections(3))
    assert base64.b64decode(built.value_b64) == value
    assert built.rejected_count == 3
    assert [r.index for r in built.rejections] == [0, 1, 2]
    assert built.rejections_truncated is False


def test_a_letter_within_the_limit_is_sent_as_it_is() -> None:
    built = letter(b"x" * 1000, rejections(10))
    assert fit_to_size(built, size(built)) == built


def test_a_letter_of_a_whole_refused_message_has_no_rejections() -> None:
    built = dead_letter(
        record(b"not json"),
        stage="normalizer",
        reason_code="malformed_json",
        reason="Expecting value: line 1 column 1 (char 0)",
        failed_at=FAILED_AT,
    )
    assert (built.rejected_count, built.rejections, built.rejections_truncated) == (0, (), False)


@pytest.mark.parametrize("max_bytes", [20_000, 50_000, 123_457])
def test_a_letter_over_the_limit_keeps_the_first_rejections_that_fit(max_bytes: int) -> None:
    built = letter(b"x" * 10_000, rejections(400))
    fitted = fit_to_size(built, max_bytes)
    assert size(fitted) <= max_bytes
    assert fitted.rejections == built.rejections[: len(fitted.rejections)]
    one_more = fitted.model_copy(
        update={"rejections": built.rejections[: len(fitted.rejections) + 1]}
    )
    assert size(one_more) > max_bytes  # as many as fit, not fewer


def test_a_cut_letter_is_marked_and_still_counts_and_describes_every_rejection() -> None:
    built = letter(b"x" * 10_000, rejections(400))
    fitted = fit_to_size(built, 50_000)
    assert fitted.rejections_truncated is True
    assert fitted.rejected_count == 400
    assert fitted.reason == built.reason
    assert fitted.value_b64 == built.value_b64  # the message itself is never cut


def test_a_cut_letter_is_still_a_valid_dead_letter() -> None:
    fitted = fit_to_size(letter(b"x" * 10_000, rejections(400)), 50_000)
    assert DeadLetter.model_validate_json(fitted.model_dump_json()) == fitted


def test_a_single_rejection_larger_than_the_room_left_leaves_none_listed() -> None:
    fitted = fit_to_size(letter(b"x" * 1000, rejections(1, item_bytes=100_000)), 20_000)
    assert (fitted.rejections, fitted.rejected_count, fitted.rejections_truncated) == (
        (),
        1,
        True,
    )


def test_a_full_size_webhook_of_bad_deals_fits_kafkas_default_limit() -> None:
    # A 256 KiB body (ingest's default limit) is about 350 KB as a raw record.
    built = letter(b"x" * 350_000, rejections(850, item_bytes=1000))
    fitted = fit_to_size(built)
    assert size(fitted) <= MAX_DEAD_LETTER_BYTES
    assert fitted.rejections_truncated is True
    assert 0 < len(fitted.rejections) < 850
