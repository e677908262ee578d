"""A broker whose data arrives in several shapes names each extra one by a top-level "kind" and
has a mapper for it; its usual payload names none, and a kind it has no mapper for is refused
whole, with the kind named. A broker with no extra kinds maps every payload with its mapper."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import orjson
import pytest

from services.shared.brokers import Broker, Credentials, MappedEvent, Skipped, broker
from services.shared.canonical import CanonicalBatch
from services.shared.envelope import RawEvent
from services.shared.errors import InvalidEvent
from tests.support.builders import PINNED_CONNECTION, PINNED_LOGIN, fixture_deals, mt5_body

AT = datetime(2024, 6, 4, 9, 0, 5, tzinfo=UTC)


def event(document: object) -> RawEvent:
    return RawEvent.wrap(
        source="webhook",
        connection=PINNED_CONNECTION,
        received_at=AT,
        delivery_id="msg_kinds",
        body=orjson.dumps(document, default=str),
    )


NOTHING = CanonicalBatch(
    event_id=uuid.UUID(int=1), source="webhook", connection=PINNED_CONNECTION, received_at=AT
)


def mapped_by(name: str) -> MappedEvent:
    """What a test mapper answers: its name, as the one item it skipped."""
    return MappedEvent(NOTHING, skipped=(Skipped(0, name, None),))


def usual(raw: RawEvent) -> MappedEvent:
    return mapped_by("usual")


def imported(raw: RawEvent) -> MappedEvent:
    return mapped_by("imported")


WITH_KINDS = Broker(
    name="several",
    title="Several",
    map_event=usual,
    credentials=Credentials(()),
    payload_kinds={"several.import": imported},
)


def test_a_payload_naming_no_kind_is_the_usual_one() -> None:
    assert WITH_KINDS.map(event({"deals": [{"kind": "nested, not a payload kind"}]})) == (
        mapped_by("usual")
    )


def test_a_payload_of_a_known_kind_goes_to_its_mapper() -> None:
    assert WITH_KINDS.map(event({"kind": "several.import", "rows": []})) == mapped_by("imported")


@pytest.mark.parametrize(
    ("kind", "named"), [("several.unheard_of", "'several.unheard_of'"), (42, "42")]
)
def test_a_kind_no_mapper_knows_is_refused_and_named(kind: object, named: str) -> None:
    with pytest.raises(InvalidEvent, match=f"Several payload of kind {named}") as refused:
        WITH_KINDS.map(event({"kind": kind}))
    assert refused.value.code == "invalid_payload"


def test_a_broker_without_extra_kinds_maps_every_payload_with_its_mapper() -> None:
    plain = Broker(name="plain", title="Plain", map_event=usual, credentials=Credentials(()))
    assert plain.map(event({"kind": "plain.page"})) == mapped_by("usual")


def test_an_mt5_webhook_body_is_its_usual_payload() -> None:
    mapped = broker("mt5").map(event(mt5_body(PINNED_LOGIN, fixture_deals())))
    assert mapped.rejected == ()
    assert len(mapped.batch.fills) == len(fixture_deals())
