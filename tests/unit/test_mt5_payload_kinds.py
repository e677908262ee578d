"""An MT5 payload says what it is by its "kind" (a webhook body has none), and each kind has its
own reader; a kind no reader knows is refused whole, with the kind named."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson
import pytest

from services.shared.brokers.mt5 import map_event
from services.shared.envelope import RawEvent
from services.shared.errors import InvalidEvent
from tests.support.builders import PINNED_CONNECTION, PINNED_LOGIN, fixture_deals, mt5_body


def event(document: object) -> RawEvent:
    return RawEvent.wrap(
        source="webhook",
        connection=PINNED_CONNECTION,
        received_at=datetime(2024, 6, 4, 9, 0, 5, tzinfo=UTC),
        delivery_id="msg_kinds",
        body=orjson.dumps(document, default=str),
    )


def test_a_body_without_a_kind_is_a_webhook() -> None:
    mapped = map_event(event(mt5_body(PINNED_LOGIN, fixture_deals())))
    assert mapped.rejected == ()
    assert len(mapped.batch.fills) == len(fixture_deals())


def test_a_kind_no_reader_knows_is_refused_and_named() -> None:
    with pytest.raises(InvalidEvent, match=r"kind 'mt5\.unheard_of'") as refused:
        map_event(event({"kind": "mt5.unheard_of", "deals": []}))
    assert refused.value.code == "invalid_payload"


def test_a_webhook_body_carrying_a_kind_field_is_not_read_as_a_webhook() -> None:
    with pytest.raises(InvalidEvent, match="kind 42"):
        map_event(event(mt5_body(PINNED_LOGIN, fixture_deals()) | {"kind": 42}))
