"""Building a dead letter cannot fail: any bytes, any nesting, any text make a valid dead letter
within the size limit, which carries the record's bytes whenever they fit and names them
(size and hash) when they do not."""

from __future__ import annotations

import base64
import hashlib
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.shared.dead_letters import (
    MAX_DEAD_LETTER_BYTES,
    DeadLetter,
    ItemRejection,
    dead_letter,
    fit_to_size,
)
from tests.support.records import consumer_record

FAILED_AT = datetime(2024, 6, 4, 9, 0, 5, tzinfo=UTC)
ANY_TEXT = st.text(st.characters(codec=None, exclude_categories=()), max_size=300)
AWKWARD_TEXT = st.sampled_from(["\ud800", "\udfff tail", "\x00", "\ufffe", "e\u0301", "🚀" * 50])
TEXT = ANY_TEXT | AWKWARD_TEXT
LEAVES = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.decimals()
    | st.sampled_from([Decimal("1e999999"), Decimal("-1e-999999"), Decimal("NaN")])
    | TEXT
)
JSONISH = st.recursive(
    LEAVES,
    lambda children: (
        st.lists(children, max_size=5)
        | st.dictionaries(TEXT, children, max_size=5)
        | st.tuples(children, children)
    ),
    max_leaves=60,
)


def deep(depth: int) -> Any:
    value: Any = "bottom"
    for _ in range(depth):
        value = [value]
    return value


ITEMS = JSONISH | st.integers(100, 900).map(deep) | st.builds(object)
PROPERTIES = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def rejection(index: int | None, code: str, detail: str, item: Any) -> ItemRejection:
    return ItemRejection(index=index, code=code, detail=detail, item=item)


@PROPERTIES
@given(
    value=st.binary(max_size=4096),
    key=st.none() | st.binary(max_size=64),
    reason_code=TEXT,
    reason=TEXT,
    event_id=st.none() | TEXT,
    rejected=st.lists(
        st.builds(rejection, st.none() | st.integers(), TEXT, TEXT, ITEMS), max_size=20
    ),
)
def test_any_record_and_any_rejections_make_a_valid_letter_within_the_limit(
    value: bytes,
    key: bytes | None,
    reason_code: str,
    reason: str,
    event_id: str | None,
    rejected: list[ItemRejection],
) -> None:
    letter = fit_to_size(
        dead_letter(
            consumer_record(value, key=key),
            stage="normalizer",
            reason_code=reason_code,
            reason=reason,
            failed_at=FAILED_AT,
            event_id=event_id,
            rejections=rejected,
        )
    )
    sent = letter.model_dump_json().encode()
    assert len(sent) <= MAX_DEAD_LETTER_BYTES
    orjson.loads(sent)  # strict UTF-8 JSON
    read = DeadLetter.model_validate_json(sent)
    assert base64.b64decode(read.value_b64) == value
    assert read.value_sha256 == hashlib.sha256(value).hexdigest()
    assert read.rejected_count == len(rejected)


@settings(max_examples=20, deadline=None)
@given(size=st.integers(MAX_DEAD_LETTER_BYTES, 4 * 1024 * 1024))
def test_a_record_too_large_to_carry_is_named_by_size_and_hash_instead(size: int) -> None:
    value = b"x" * size
    letter = fit_to_size(
        dead_letter(
            consumer_record(value),
            stage="writer",
            reason_code="write_rejected",
            reason="too big",
            failed_at=FAILED_AT,
        )
    )
    assert len(letter.model_dump_json().encode()) <= MAX_DEAD_LETTER_BYTES
    assert (letter.value_truncated, letter.value_b64, letter.value_bytes) == (True, "", size)
    assert letter.value_sha256 == hashlib.sha256(value).hexdigest()
    assert (letter.topic, letter.partition, letter.offset) == ("poscal.raw", 0, 0)
