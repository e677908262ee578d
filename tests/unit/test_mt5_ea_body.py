"""The Expert Advisor's body builder, batching and webhook ids, compiled from its .mqh source:
the body is exactly what ingest and the MT5 mapper expect, strings and numbers are written
exactly, and the same deals always make the same webhook id."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.shared.brokers.mt5 import BROKER
from services.shared.brokers.mt5.webhook import Mt5Webhook, TradeDeal
from services.shared.envelope import RawEvent
from services.shared.signatures import decode_secret, parse_headers, verify
from tests.support.builders import PINNED_CONNECTION, PINNED_LOGIN, SERVER, fixture_deals
from tests.support.mt5_ea import TRADE_DEAL_FIELDS, EaHarness, EaRequest, ea_harness, utf16_hex
from tests.unit.test_signatures import SPEC_SECRET

map_event = BROKER.map  # every MT5 payload, by its kind

NOW = 1_717_502_500


@pytest.fixture(scope="module")
def ea(tmp_path_factory: pytest.TempPathFactory) -> EaHarness:
    return ea_harness(Path(tmp_path_factory.getbasetemp()))


def ea_requests(ea: EaHarness, deals: list[dict[str, Any]], **options: Any) -> list[EaRequest]:
    values: dict[str, Any] = {
        "secret": SPEC_SECRET,
        "timestamp": NOW,
        "login": PINNED_LOGIN,
        "balance": 1069.44,
        "equity": 1071.0,
    }
    return ea.requests(deals=deals, **(values | options))


def many_deals(count: int, comment: str = "") -> list[dict[str, Any]]:
    first = fixture_deals()[0]
    return [first | {"ticket": 1_000_000 + i, "comment": comment} for i in range(count)]


def json_string(ea: EaHarness, text: str) -> bytes:
    return bytes.fromhex(ea.line("json-string", utf16_hex(text)))


@pytest.mark.parametrize(
    ("text", "written"),
    [
        ("EURUSD", b'"EURUSD"'),
        ("", b'""'),
        ('say "hi"', b'"say \\"hi\\""'),
        ("C:\\path", b'"C:\\\\path"'),
        ("[tp 1.08800]\n\r\t", b'"[tp 1.08800]\\n\\r\\t"'),
        ("\x08\x0c", b'"\\b\\f"'),
        ("\x00\x01\x1f", b'"\\u0000\\u0001\\u001f"'),
        ("\x7f/", b'"\x7f/"'),
        ("Gewinn €", '"Gewinn €"'.encode()),
        ("\U0001f4c8 up", '"\U0001f4c8 up"'.encode()),
    ],
)
def test_strings_are_json_escaped_and_sent_as_utf8(
    ea: EaHarness, text: str, written: bytes
) -> None:
    assert json_string(ea, text) == written
    assert json.loads(written) == text


@pytest.mark.parametrize(
    ("text", "reads_as"),
    [("a\ud800b", "a\ufffdb"), ("\udc00", "\ufffd"), ("x\ud83d", "x\ufffd")],
)
def test_a_lone_surrogate_becomes_a_replacement_character_so_the_body_stays_valid_utf8(
    ea: EaHarness, text: str, reads_as: str
) -> None:
    written = json_string(ea, text)
    assert json.loads(written.decode("utf-8")) == reads_as


@settings(max_examples=60, deadline=None)
@given(text=st.text(max_size=40))
def test_any_string_reads_back_as_itself(ea: EaHarness, text: str) -> None:
    assert json.loads(json_string(ea, text).decode("utf-8")) == text


@pytest.mark.parametrize(
    ("value", "written"),
    [
        (1.085, "1.085"),
        (0.30, "0.3"),
        (-2.1, "-2.1"),
        (-1.36, "-1.36"),
        (75.0, "75"),
        (0.0, "0"),
        (1069.44, "1069.44"),
        (123456789.123, "123456789.123"),
        (2.0**53, "9007199254740992"),
    ],
)
def test_numbers_are_written_with_the_fewest_digits_that_are_exactly_the_double(
    ea: EaHarness, value: float, written: str
) -> None:
    assert ea.line("json-number", repr(value)) == written


@pytest.mark.parametrize("value", [0.1 + 0.2, 1e-20, 5e-324, 1.7976931348623157e308, -3.3e-7])
def test_a_double_without_a_short_fixed_point_form_is_written_so_it_reads_back_exactly(
    ea: EaHarness, value: float
) -> None:
    written = ea.line("json-number", repr(value))
    assert isinstance(json.loads(written), float | int)
    assert float(Decimal(written)) == value


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_a_value_json_cannot_write_is_null_so_ingest_refuses_that_deal_alone(
    ea: EaHarness, value: str
) -> None:
    assert ea.line("json-number", value) == "null"


@settings(max_examples=80, deadline=None)
@given(value=st.floats(allow_nan=False, allow_infinity=False))
def test_every_finite_double_reads_back_as_itself(ea: EaHarness, value: float) -> None:
    assert float(Decimal(ea.line("json-number", repr(value)))) == value or (
        value == 0 and math.copysign(1, value) < 0
    )


def test_the_body_is_exactly_account_offset_and_trade_deals(ea: EaHarness) -> None:
    [request] = ea_requests(ea, fixture_deals(), offset=10800)
    document = json.loads(request.body, parse_float=Decimal)
    assert list(document) == ["account", "server_time_offset_seconds", "deals"]
    assert document["account"] == {
        "login": PINNED_LOGIN,
        "server": SERVER,
        "currency": "USD",
        "balance": Decimal("1069.44"),
        "equity": Decimal("1071"),
    }
    assert document["server_time_offset_seconds"] == 10800
    assert [list(deal) for deal in document["deals"]] == [list(TRADE_DEAL_FIELDS)] * 3
    # Every number exactly the fixture's: Decimal("0.30") == Decimal("0.3").
    assert document["deals"] == fixture_deals()
    Mt5Webhook.model_validate_json(request.body)
    for deal in document["deals"]:
        TradeDeal.model_validate(deal)


def test_the_body_maps_to_the_fixtures_fills(ea: EaHarness) -> None:
    [request] = ea_requests(ea, fixture_deals())
    received = datetime.now(UTC)
    event = RawEvent.wrap(
        source="webhook",
        connection=PINNED_CONNECTION,
        received_at=received,
        delivery_id=request.webhook_id,
        body=request.body,
        sent_at=received,
    )
    mapping = map_event(event)
    assert mapping.rejected == ()
    fills = mapping.batch.fills
    assert [f.volume for f in fills] == [Decimal("0.30"), Decimal("0.10"), Decimal("0.20")]
    assert [f.price for f in fills] == [Decimal("1.085"), Decimal("1.0865"), Decimal("1.088")]
    assert sum(f.profit for f in fills) == Decimal("75")
    assert fills[0].executed_at.isoformat() == "2024-06-03T06:00:00.123000+00:00"
    assert mapping.batch.account is not None
    assert mapping.batch.account.balance == Decimal("1069.44")


def test_the_request_carries_the_headers_ingest_verifies(ea: EaHarness) -> None:
    [request] = ea_requests(ea, fixture_deals())
    assert list(request.headers) == [
        "content-type",
        "user-agent",
        "webhook-id",
        "webhook-timestamp",
        "webhook-signature",
    ]
    assert request.headers["content-type"] == "application/json"
    assert request.headers["webhook-timestamp"] == str(NOW)
    verify(parse_headers(request.headers), request.body, [decode_secret(SPEC_SECRET)])


def test_the_signature_covers_the_exact_body_bytes_sent_not_a_terminating_nul(
    ea: EaHarness,
) -> None:
    [request] = ea_requests(ea, [fixture_deals()[2] | {"comment": "Gewinn € \U0001f4c8"}])
    assert not request.body.endswith(b"\x00")
    request.body.decode("utf-8")
    verify(parse_headers(request.headers), request.body, [decode_secret(SPEC_SECRET)])


def test_the_webhook_id_names_the_account_and_the_tickets(ea: EaHarness) -> None:
    [request] = ea_requests(ea, fixture_deals())
    prefix, digest = request.webhook_id.rsplit("-", 1)
    assert prefix == f"mt5-{PINNED_LOGIN}-900001-900311-3"
    assert len(digest) == 16 and int(digest, 16) >= 0


def test_the_same_deals_sent_again_later_have_the_same_webhook_id(ea: EaHarness) -> None:
    first = ea_requests(ea, fixture_deals(), timestamp=NOW)
    # Later, with the balance moved on: the same batch is the same delivery to ingest.
    again = ea_requests(ea, fixture_deals(), timestamp=NOW + 3600, balance=2000.0)
    assert [r.webhook_id for r in again] == [r.webhook_id for r in first]
    assert again[0].body != first[0].body


@pytest.mark.parametrize(
    "change",
    [{"type": 14}, {"profit": Decimal("0")}, {"comment": "cancelled"}, {"ticket": 900312}],
)
def test_a_deal_changed_by_the_server_is_a_new_webhook_id(
    ea: EaHarness, change: dict[str, Any]
) -> None:
    deals = fixture_deals()
    [before] = ea_requests(ea, deals)
    [after] = ea_requests(ea, [*deals[:2], deals[2] | change])
    assert after.webhook_id != before.webhook_id


def test_another_account_with_the_same_tickets_is_another_webhook_id(ea: EaHarness) -> None:
    [mine] = ea_requests(ea, fixture_deals())
    [theirs] = ea_requests(ea, fixture_deals(), login=PINNED_LOGIN + 1)
    assert mine.webhook_id != theirs.webhook_id


def test_deals_are_batched_by_count_in_history_order(ea: EaHarness) -> None:
    requests = ea_requests(ea, many_deals(250), batch_size=100)
    counts = [len(json.loads(r.body)["deals"]) for r in requests]
    assert counts == [100, 100, 50]
    tickets = [d["ticket"] for r in requests for d in json.loads(r.body)["deals"]]
    assert tickets == [1_000_000 + i for i in range(250)]
    assert len({r.webhook_id for r in requests}) == 3
    assert [r.file_name for r in requests] == [
        "000000000001.batch",
        "000000000002.batch",
        "000000000003.batch",
    ]


def test_a_batch_stays_within_its_byte_budget(ea: EaHarness) -> None:
    # 31-character comments of three-byte characters: each deal's JSON is about 400 bytes.
    deals = many_deals(40, comment="€" * 31)
    requests = ea_requests(ea, deals, batch_size=500, max_bytes=4000)
    for request in requests:
        deals_part = request.body.split(b'"deals":[', 1)[1].removesuffix(b"]}")
        assert len(deals_part) <= 4000
    assert sum(len(json.loads(r.body)["deals"]) for r in requests) == 40
    assert len(requests) > 1


def test_the_default_budget_keeps_a_full_batch_of_the_largest_deals_under_ingests_limit(
    ea: EaHarness,
) -> None:
    # MT5 caps symbols, comments and external ids at 31 characters; control characters are
    # the longest to write (six bytes each), three-byte characters next.
    worst = [
        deal | {"symbol": "€" * 31, "external_id": "\x02" * 31}
        for deal in many_deals(500, comment="\x01" * 31)
    ]
    requests = ea_requests(ea, worst, batch_size=500)
    assert max(len(r.body) for r in requests) < 256 * 1024


def test_a_deal_larger_than_the_budget_is_still_sent_alone(ea: EaHarness) -> None:
    requests = ea_requests(ea, many_deals(2, comment="x" * 500), max_bytes=100)
    assert [len(json.loads(r.body)["deals"]) for r in requests] == [1, 1]


def test_utf8_length_counts_what_the_conversion_will_produce(ea: EaHarness) -> None:
    for text in ["", "abc", "é", "€", "\U0001f4c8", "a\ud800b"]:
        units = text.encode("utf-16-be", "surrogatepass")
        expected = len(units.decode("utf-16-be", "replace").encode("utf-8"))
        assert int(ea.line("utf8-length", utf16_hex(text))) == expected
