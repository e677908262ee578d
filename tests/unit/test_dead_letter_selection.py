"""Choosing dead letters for an operator: filters by stage, reason, connection and time; a
letter shown in full without what a sender called a secret; a replay plan that sends each
original message back, byte for byte, with its key and trace headers, to where it came from."""

from __future__ import annotations

import base64
import uuid
from datetime import UTC, datetime, timedelta

import orjson
import pytest
from aiokafka import ConsumerRecord

from services.shared.dead_letter_selection import (
    REDACTED,
    REPLAY_OF_HEADER,
    InvalidSelection,
    LetterFilter,
    LetterId,
    StoredLetter,
    letter_connection,
    letter_summary,
    letter_view,
    parse_moment,
    plan_replay,
    replay_report,
    select_letters,
    stored_letters,
)
from services.shared.dead_letters import DeadLetter, ItemRejection, dead_letter
from services.shared.envelope import ConnectionRef, RawEvent
from tests.support.records import consumer_record

NOW = datetime(2026, 12, 2, 14, 0, tzinfo=UTC)
CONNECTION = ConnectionRef(
    connection_id=uuid.UUID("0b6f8a52-0c1e-4a57-9d3e-3b1c2a4d5e6f"),
    user_id=uuid.uuid4(),
    account_id=uuid.uuid4(),
    broker="mt5",
    connection_type="demo",
    account_number="52557820",
    server="PosCal-Test",
)
OTHER = uuid.UUID("9f0e1d2c-3b4a-4958-8776-a5b4c3d2e1f0")
TRACE = ("traceparent", b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
FIRST = LetterId(0, 0)
EVENT_ID = ("poscal-event-id", b"5a7d0c9e-1111-4222-8333-944455556666")


def raw_bytes(body: bytes, connection: ConnectionRef = CONNECTION) -> bytes:
    return (
        RawEvent.wrap(
            source="webhook",
            connection=connection,
            received_at=NOW,
            delivery_id="msg_1",
            body=body,
        )
        .model_dump_json()
        .encode()
    )


def stored(
    value: bytes,
    *,
    at: LetterId = FIRST,
    stage: str = "normalizer",
    reason_code: str = "malformed_json",
    failed_at: datetime = NOW,
    key: bytes | None = str(CONNECTION.connection_id).encode(),
    rejections: tuple[ItemRejection, ...] = (),
    topic: str = "poscal.raw.v1",
) -> StoredLetter:
    record = consumer_record(value, topic=topic, partition=4, offset=1045, key=key)
    letter = dead_letter(
        record,
        stage=stage,  # type: ignore[arg-type]
        reason_code=reason_code,
        reason="body is not JSON",
        failed_at=failed_at,
        rejections=rejections,
    )
    headers = (TRACE, EVENT_ID, ("poscal-reason-code", reason_code.encode()))
    return StoredLetter(at, letter, key, headers)


def test_a_letter_id_is_the_partition_and_offset_on_the_dead_letter_topic() -> None:
    assert LetterId.parse("2:17") == LetterId(2, 17)
    assert str(LetterId(2, 17)) == "2:17"
    for bad in ("2", "2:", ":17", "a:b", "-1:3"):
        with pytest.raises(InvalidSelection, match="PARTITION:OFFSET"):
            LetterId.parse(bad)


def test_times_are_iso_in_utc_unless_they_say_otherwise_or_a_time_ago() -> None:
    assert parse_moment("2026-12-01T10:00:00Z", NOW) == datetime(2026, 12, 1, 10, tzinfo=UTC)
    assert parse_moment("2026-12-01T10:00:00", NOW) == datetime(2026, 12, 1, 10, tzinfo=UTC)
    assert parse_moment("2026-12-01T12:00:00+02:00", NOW) == datetime(2026, 12, 1, 10, tzinfo=UTC)
    assert parse_moment("90m", NOW) == NOW - timedelta(minutes=90)
    assert parse_moment("7d", NOW) == NOW - timedelta(days=7)
    with pytest.raises(InvalidSelection, match="neither a time"):
        parse_moment("yesterday", NOW)


def test_a_letters_connection_is_its_messages_else_its_keys() -> None:
    assert letter_connection(stored(raw_bytes(b"{")).letter) == CONNECTION.connection_id
    not_an_envelope = stored(b"not an envelope", key=str(OTHER).encode())
    assert letter_connection(not_an_envelope.letter) == OTHER
    assert letter_connection(stored(b"garbage", key=b"garbage").letter) is None
    assert letter_connection(stored(b"garbage", key=None).letter) is None


def test_every_condition_given_must_hold_and_none_given_selects_all() -> None:
    early = stored(raw_bytes(b"{"), at=LetterId(0, 1), failed_at=NOW - timedelta(hours=3))
    writer = stored(
        raw_bytes(b"{}"),
        at=LetterId(1, 0),
        stage="writer",
        reason_code="write_rejected",
        topic="poscal.canonical.v1",
    )
    other = stored(b"x", at=LetterId(2, 5), key=str(OTHER).encode(), reason_code="invalid_envelope")
    letters = [writer, other, early]

    assert select_letters(letters, LetterFilter()) == [early, writer, other]
    assert select_letters(letters, LetterFilter(stages=frozenset({"writer"}))) == [writer]
    assert select_letters(letters, LetterFilter(reason_codes=frozenset({"invalid_envelope"}))) == [
        other
    ]
    assert select_letters(letters, LetterFilter(connection_ids=frozenset({OTHER}))) == [other]
    assert select_letters(letters, LetterFilter(since=NOW - timedelta(hours=1))) == [writer, other]
    assert select_letters(letters, LetterFilter(until=NOW - timedelta(hours=1))) == [early]
    assert select_letters(letters, LetterFilter(ids=frozenset({LetterId(2, 5)}))) == [other]
    both = LetterFilter(stages=frozenset({"normalizer"}), connection_ids=frozenset({OTHER}))
    assert select_letters(letters, both) == [other]
    assert LetterFilter().selects_everything and not both.selects_everything


def test_records_that_are_no_letters_are_named_not_dropped_silently() -> None:
    letter = stored(raw_bytes(b"{")).letter
    records: list[ConsumerRecord] = [
        consumer_record(letter.model_dump_json().encode(), partition=0, offset=3),
        consumer_record(b"someone else's record", partition=1, offset=9),
    ]
    letters, unreadable = stored_letters(records)
    assert [s.id for s in letters] == [LetterId(0, 3)]
    assert letters[0].letter == letter
    assert [u.id for u in unreadable] == [LetterId(1, 9)]
    assert unreadable[0].problem.startswith("not a dead letter")


def test_the_summary_names_the_letter_its_failure_and_its_source() -> None:
    summary = letter_summary(stored(raw_bytes(b"{"), at=LetterId(3, 8)))
    assert summary == {
        "id": "3:8",
        "failed_at": "2026-12-02T14:00:00+00:00",
        "stage": "normalizer",
        "reason_code": "malformed_json",
        "reason": "body is not JSON",
        "connection_id": str(CONNECTION.connection_id),
        "event_id": None,
        "source": {"topic": "poscal.raw.v1", "partition": 4, "offset": 1045},
        "rejected_count": 0,
        "replayable": True,
    }


def test_show_decodes_the_message_and_its_body_and_redacts_what_a_sender_calls_secret() -> None:
    body = orjson.dumps(
        {
            "account": {"login": 52557820, "password": "hunter2-investor"},
            "deals": [{"ticket": 7, "comment": "ok", "api_key": "k-123456789012"}],
            "Authorization": "Bearer abcdefghijklmnop",
        }
    )
    rejection = ItemRejection(
        index=0, code="invalid_deal", detail="volume", item={"ticket": 7, "token": "t-9876543210"}
    )
    view = letter_view(stored(raw_bytes(body), rejections=(rejection,)))
    shown = orjson.dumps(view)
    for secret in (b"hunter2-investor", b"k-123456789012", b"abcdefghijklmnop", b"t-9876543210"):
        assert secret not in shown
        assert base64.b64encode(secret)[:12] not in shown
    assert "value_b64" not in view
    assert view["value"]["body"]["account"] == {"login": 52557820, "password": REDACTED}
    assert view["value"]["body"]["deals"][0]["comment"] == "ok"
    assert view["value"]["connection"]["account_number"] == "52557820"
    assert view["rejections"][0]["item"] == {"ticket": 7, "token": REDACTED}
    assert view["redacted"] == [
        "rejections[0].item.token",
        "value.body.account.password",
        "value.body.deals[0].api_key",
        "value.body.Authorization",
    ]
    assert view["headers"] == {
        "traceparent": TRACE[1].decode(),
        "poscal-event-id": EVENT_ID[1].decode(),
    }


def test_show_gives_a_body_that_is_no_json_as_text() -> None:
    view = letter_view(stored(raw_bytes(b"\xff\xfe{not json")))
    assert view["value"]["body"] == "\ufffd\ufffd{not json"
    assert letter_view(stored(b"not an envelope"))["value"] == "not an envelope"


def test_a_replay_sends_each_original_message_byte_for_byte_to_its_source_topic() -> None:
    raw = raw_bytes(b"{")
    normalizer = stored(raw, at=LetterId(0, 2))
    writer = stored(
        b'{"canonical": 1}', at=LetterId(1, 4), stage="writer", topic="poscal.canonical.v1"
    )
    plan = plan_replay([normalizer, writer], "poscal.deadletter.v1")

    assert [(r.letter_id, r.topic, r.value) for r in plan.records] == [
        (LetterId(0, 2), "poscal.raw.v1", raw),
        (LetterId(1, 4), "poscal.canonical.v1", b'{"canonical": 1}'),
    ]
    assert plan.records[0].key == str(CONNECTION.connection_id).encode()
    # The trace context and event id go back as they came; the reason code stays behind.
    assert plan.records[0].headers == (
        TRACE,
        EVENT_ID,
        (REPLAY_OF_HEADER, b"poscal.deadletter.v1/0:2"),
    )
    assert plan.per_topic == {"poscal.canonical.v1": 1, "poscal.raw.v1": 1}


def test_a_letter_whose_message_was_too_large_to_carry_is_skipped_saying_where_it_is() -> None:
    carried = stored(raw_bytes(b"{"), at=LetterId(0, 1))
    too_large = stored(raw_bytes(b"{"), at=LetterId(0, 2))
    cut = StoredLetter(
        too_large.id,
        DeadLetter.model_validate(
            too_large.letter.model_dump() | {"value_b64": "", "value_truncated": True}
        ),
        too_large.key,
        too_large.headers,
    )
    plan = plan_replay([carried, cut], "dlq")
    assert [r.letter_id for r in plan.records] == [LetterId(0, 1)]
    [skipped] = plan.skipped
    assert skipped.letter_id == LetterId(0, 2)
    assert "poscal.raw.v1 partition 4 offset 1045" in skipped.why
    assert letter_summary(cut)["replayable"] is False


def test_the_report_counts_per_topic_and_names_each_letter() -> None:
    plan = plan_replay([stored(raw_bytes(b"{"), at=LetterId(0, 2))], "dlq")
    assert replay_report(plan, dry_run=False) == {
        "dry_run": False,
        "replayed": 1,
        "selected": 1,
        "per_topic": {"poscal.raw.v1": 1},
        "letters": [{"id": "0:2", "topic": "poscal.raw.v1"}],
        "skipped": [],
    }
    assert replay_report(plan, dry_run=True)["replayed"] == 0
