"""MT5 deal webhooks become canonical fills, cash movements and a balance snapshot.

Expected values come from the shared fixture's `derived_closed_trade`, not from the mapper.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import orjson
import pytest

from services.shared.brokers import mapper_for
from services.shared.brokers.mt5 import BROKER
from services.shared.canonical import CanonicalBatch
from services.shared.dead_letters import json_safe
from services.shared.envelope import ConnectionRef, RawEvent
from services.shared.errors import InvalidEvent
from tests.support.builders import FIXTURES, PINNED_CONNECTION

map_event = BROKER.map  # every MT5 payload, by its kind

LOGIN, SERVER = 52557820, "Broker-Demo"
PREFIX = f"mt5:{SERVER}:{LOGIN}"
GMT_PLUS_3 = 10800
SENT_AT = datetime(2024, 6, 4, 9, 0, 5, tzinfo=UTC)
RECEIVED_AT = SENT_AT + timedelta(milliseconds=250)
CONNECTION = PINNED_CONNECTION.model_copy(update={"server": SERVER})


def fixture() -> dict[str, Any]:
    """The shared partial-close fixture (vendored copy, checked byte-equal to ../shared)."""
    text = (FIXTURES / "mt5" / "partial_close_constructed.json").read_text()
    document: dict[str, Any] = json.loads(text, parse_float=Decimal)
    return document


def fixture_deals() -> list[dict[str, Any]]:
    deals: list[dict[str, Any]] = fixture()["deals"]
    return deals


DERIVED = fixture()["derived_closed_trade"]


def utc(text: str) -> datetime:
    """A fixture time such as `2024-06-04T09:00:00Z (last OUT deal)`."""
    return datetime.fromisoformat(text.split(" ")[0].replace("Z", "+00:00"))


def body(
    deals: list[Any],
    *,
    login: int = LOGIN,
    server: str = SERVER,
    offset: int = GMT_PLUS_3,
    **account: Any,
) -> dict[str, Any]:
    return {
        "account": {
            "login": login,
            "server": server,
            "currency": "USD",
            "balance": Decimal("1069.44"),
            "equity": Decimal("1071.00"),
        }
        | account,
        "server_time_offset_seconds": offset,
        "deals": deals,
    }


def as_json(document: Any) -> bytes:
    """JSON with every Decimal written as the exact number text an Expert Advisor prints."""
    return orjson.dumps(document, default=_exact_number)


def _exact_number(value: object) -> orjson.Fragment:
    if isinstance(value, Decimal):
        return orjson.Fragment(str(value).encode())
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def event(
    payload: dict[str, Any] | bytes,
    *,
    connection: ConnectionRef = CONNECTION,
    sent_at: datetime | None = SENT_AT,
) -> RawEvent:
    return RawEvent.wrap(
        source="webhook",
        connection=connection,
        received_at=RECEIVED_AT,
        delivery_id="msg_2hQm7bB1",
        body=payload if isinstance(payload, bytes) else as_json(payload),
        sent_at=sent_at,
    )


def mapped(payload: dict[str, Any] | bytes) -> CanonicalBatch:
    mapping = map_event(event(payload))
    assert mapping.rejected == ()
    return mapping.batch


def invalid_event_code(
    payload: dict[str, Any] | bytes, connection: ConnectionRef = CONNECTION
) -> str:
    with pytest.raises(InvalidEvent) as raised:
        map_event(event(payload, connection=connection))
    return raised.value.code


def cash_deal(ticket: int, deal_type: int, amount: str, comment: str = "") -> dict[str, Any]:
    return fixture_deals()[0] | {
        "ticket": ticket,
        "order": 0,
        "type": deal_type,
        "entry": 0,
        "position_id": 0,
        "volume": Decimal("0.00"),
        "price": Decimal("0.00000"),
        "commission": Decimal("0.00"),
        "profit": Decimal(amount),
        "symbol": "",
        "comment": comment,
    }


# --- fills, keys and times ------------------------------------------------------------------


def test_the_fixture_deals_become_three_fills_of_one_position() -> None:
    fills = mapped(body(fixture_deals())).fills
    assert [(f.entry, f.side, f.symbol) for f in fills] == [
        ("in", "buy", "EURUSD"),
        ("out", "sell", "EURUSD"),
        ("out", "sell", "EURUSD"),
    ]


def test_each_deal_is_keyed_by_server_login_and_its_ticket() -> None:
    fills = mapped(body(fixture_deals())).fills
    assert [f.fill_key for f in fills] == [
        "mt5:Broker-Demo:52557820:deal:900001",
        "mt5:Broker-Demo:52557820:deal:900057",
        "mt5:Broker-Demo:52557820:deal:900311",
    ]
    assert [(f.broker_ref, f.order_ref) for f in fills] == [
        ("900001", "800001"),
        ("900057", "800090"),
        ("900311", "800342"),
    ]


def test_every_deal_of_a_position_shares_the_position_identifier_key() -> None:
    fills = mapped(body(fixture_deals())).fills
    assert {f.position_key for f in fills} == {f"mt5:Broker-Demo:52557820:{DERIVED['position_id']}"}


def test_server_wall_clock_minus_the_reported_offset_is_the_utc_instant_to_the_millisecond() -> (
    None
):
    opening, first_close, last_close = mapped(body(fixture_deals())).fills
    assert opening.executed_at == utc(DERIVED["open_time_utc"]) + timedelta(milliseconds=123)
    assert last_close.executed_at == utc(DERIVED["close_time_utc"]) + timedelta(milliseconds=789)
    assert first_close.executed_at == datetime(2024, 6, 3, 8, 0, 0, 456_000, tzinfo=UTC)
    assert opening.executed_at.utcoffset() == timedelta(0)


def test_the_raw_server_time_is_kept_as_the_broker_wrote_it() -> None:
    fills = mapped(body(fixture_deals())).fills
    assert [f.broker_time for f in fills] == ["1717405200123", "1717412400456", "1717502400789"]


@pytest.mark.parametrize("jittery", [10799, 10798, 10801, 10802])
def test_a_jittery_reported_offset_rounds_to_the_servers_whole_zone(jittery: int) -> None:
    exact = mapped(body(fixture_deals(), offset=GMT_PLUS_3)).fills
    jittered = mapped(body(fixture_deals(), offset=jittery)).fills
    assert [f.executed_at for f in jittered] == [f.executed_at for f in exact]


def test_a_server_west_of_greenwich_is_converted_forwards() -> None:
    [opening] = mapped(body(fixture_deals()[:1], offset=-4 * 3600)).fills
    assert opening.executed_at == datetime(2024, 6, 3, 13, 0, 0, 123_000, tzinfo=UTC)


def test_a_deal_without_millisecond_time_falls_back_to_its_seconds() -> None:
    deal = fixture_deals()[0] | {"time_msc": 0}
    [opening] = mapped(body([deal])).fills
    assert opening.executed_at == utc(DERIVED["open_time_utc"])
    assert opening.broker_time == "1717405200000"


# --- amounts --------------------------------------------------------------------------------


def test_amounts_are_the_exact_decimals_that_were_written() -> None:
    opening, first_close, last_close = mapped(body(fixture_deals())).fills
    assert str(opening.volume) == "0.30"
    assert str(opening.price) == "1.08500"
    assert str(opening.commission) == "-2.10"
    assert str(first_close.profit) == "15.00"
    assert str(last_close.swap) == "-1.36"
    assert (opening.volume, last_close.price) == (Decimal(DERIVED["qty_lots"]), Decimal("1.088"))


def test_an_amount_with_no_exact_binary_float_stays_exact() -> None:
    raw = as_json(body(fixture_deals()[:1])).replace(b'"profit":0.0', b'"profit":0.1', 1)
    [opening] = mapped(raw).fills
    assert str(opening.profit) == "0.1"  # not 0.1000000000000000055511151231257827...


def test_the_fixtures_money_adds_up_to_its_derived_trade() -> None:
    fills = mapped(body(fixture_deals())).fills
    profit = sum((f.profit for f in fills), Decimal(0))
    commission = sum((f.commission for f in fills), Decimal(0))
    swap = sum((f.swap for f in fills), Decimal(0))
    assert (profit, commission, swap) == (
        DERIVED["gross_profit"],
        DERIVED["commission"],
        DERIVED["swap"],
    )
    assert profit + commission + swap == DERIVED["net"]


# --- cash movements -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("deal_type", "kind"),
    [
        (2, "balance"),
        (3, "credit"),
        (4, "charge"),
        (5, "correction"),
        (6, "bonus"),
        (7, "commission"),
        (8, "commission_daily"),
        (9, "commission_monthly"),
        (10, "commission_agent_daily"),
        (11, "commission_agent_monthly"),
        (12, "interest"),
        (15, "dividend"),
        (16, "dividend_franked"),
        (17, "tax"),
    ],
)
def test_a_non_trade_deal_type_becomes_a_cash_movement_of_its_kind(
    deal_type: int, kind: str
) -> None:
    batch = mapped(body([cash_deal(4242, deal_type, "-12.50")]))
    assert batch.fills == ()
    [movement] = batch.cash_movements
    assert (movement.kind, movement.amount) == (kind, Decimal("-12.50"))


def test_a_charge_booked_on_a_cash_deal_counts_in_its_amount() -> None:
    charged = cash_deal(4242, 2, "100.00") | {
        "commission": Decimal("-1.50"),
        "swap": Decimal("-0.25"),
        "fee": Decimal("-0.10"),
    }
    [movement] = mapped(body([charged])).cash_movements
    assert movement.amount == Decimal("98.15")


@pytest.mark.parametrize(("deal_type", "side"), [(13, "buy"), (14, "sell")])
def test_a_cancelled_deal_is_its_fill_marked_cancelled_under_the_same_key(
    deal_type: int, side: str
) -> None:
    original = fixture_deals()[0]
    cancelled = original | {"type": deal_type, "profit": Decimal("0.00")}

    [kept] = mapped(body([original])).fills
    [fill] = mapped(body([cancelled])).fills

    assert (fill.fill_key, fill.position_key) == (kept.fill_key, kept.position_key)
    assert (fill.side, fill.cancelled, kept.cancelled) == (side, True, False)


def test_a_deposit_is_keyed_like_a_deal_and_keeps_its_time_and_comment() -> None:
    [deposit] = mapped(body([cash_deal(900000, 2, "1000.00", "Deposit")])).cash_movements
    assert deposit.movement_key == "mt5:Broker-Demo:52557820:deal:900000"
    assert (deposit.broker_ref, deposit.comment) == ("900000", "Deposit")
    assert str(deposit.amount) == "1000.00"
    assert deposit.executed_at == utc(DERIVED["open_time_utc"]) + timedelta(milliseconds=123)
    assert deposit.broker_time == "1717405200123"


def test_trades_and_cash_in_one_payload_are_separated() -> None:
    deals = [cash_deal(1, 2, "1000.00"), *fixture_deals(), cash_deal(2, 12, "0.42")]
    batch = mapped(body(deals))
    assert [f.broker_ref for f in batch.fills] == ["900001", "900057", "900311"]
    assert [m.kind for m in batch.cash_movements] == ["balance", "interest"]


# --- one bad deal does not sink the payload ------------------------------------------------


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"volume": "lots"}, "volume"),
        ({"price": "NaN"}, "price"),
        ({"profit": "Infinity"}, "profit"),
        ({"ticket": 0}, "ticket"),
        ({"ticket": -1}, "ticket"),
        ({"entry": 4}, "entry"),
        ({"symbol": 5}, "symbol"),
        ({"comment": None}, "comment"),
        ({"volume": 0}, "positive volume"),
        ({"price": 0}, "positive volume and price"),
        ({"symbol": ""}, "symbol"),
        ({"position_id": 0}, "position_id"),
        ({"swap_points": 1}, "swap_points"),
    ],
)
def test_a_deal_with_a_bad_field_is_rejected_alone_and_the_others_still_map(
    change: dict[str, Any], fragment: str
) -> None:
    deals = fixture_deals()
    bad = deals[1] | change
    mapping = map_event(event(body([deals[0], bad, deals[2]])))
    assert [f.broker_ref for f in mapping.batch.fills] == ["900001", "900311"]
    [rejection] = mapping.rejected
    assert rejection.index == 1
    assert fragment in rejection.detail
    assert rejection.code == "invalid_deal"
    assert rejection.item["ticket"] == bad["ticket"]


def test_an_unknown_extra_deal_field_is_rejected_by_name() -> None:
    deal = fixture_deals()[0] | {"take_profit": Decimal("1.09")}
    [rejection] = map_event(event(body([deal]))).rejected
    assert rejection.code == "invalid_deal"
    assert "take_profit" in rejection.detail


def test_a_deal_missing_a_field_is_rejected_by_name() -> None:
    deal = {k: v for k, v in fixture_deals()[0].items() if k != "position_id"}
    [rejection] = map_event(event(body([deal]))).rejected
    assert rejection.code == "invalid_deal"
    assert "position_id" in rejection.detail


def test_an_unknown_deal_type_is_rejected_with_its_own_code() -> None:
    deals = fixture_deals()
    mapping = map_event(event(body([deals[0] | {"type": 18}, deals[1]])))
    [rejection] = mapping.rejected
    assert (rejection.code, rejection.index) == ("unknown_deal_type", 0)
    assert [f.broker_ref for f in mapping.batch.fills] == ["900057"]


@pytest.mark.parametrize("item", [42, "deal", None, [1, 2]])
def test_a_deal_that_is_not_an_object_is_rejected_alone(item: Any) -> None:
    mapping = map_event(event(body([item, fixture_deals()[0]])))
    [rejection] = mapping.rejected
    assert (rejection.index, rejection.item) == (0, item)
    assert len(mapping.batch.fills) == 1


def test_a_rejected_deal_is_described_as_json_safe_data_with_its_exact_numbers() -> None:
    bad = fixture_deals()[1] | {"volume": "lots"}
    [rejection] = map_event(event(body([bad]))).rejected
    described = json_safe(rejection.item)
    assert described["price"] == "1.08650"
    json.dumps(described)


@pytest.mark.parametrize("time_msc", [253_402_400_000_000, 2**62])
def test_a_deal_time_out_of_the_calendar_is_rejected_alone(time_msc: int) -> None:
    deals = fixture_deals()
    mapping = map_event(event(body([deals[0], deals[1] | {"time_msc": time_msc}, deals[2]])))
    assert [f.broker_ref for f in mapping.batch.fills] == ["900001", "900311"]
    assert [r.index for r in mapping.rejected] == [1]


@pytest.mark.parametrize(
    "change",
    [
        {"time_msc": 5},  # a millisecond clock that disagrees with `time`
        {"time_msc": 1717412400456 + 5_000},
        {"time": 0, "time_msc": 0},  # no time at all
    ],
)
def test_a_deal_whose_times_disagree_or_are_missing_is_rejected_alone(
    change: dict[str, Any],
) -> None:
    deals = fixture_deals()
    mapping = map_event(event(body([deals[0], deals[1] | change, deals[2]])))
    assert [f.broker_ref for f in mapping.batch.fills] == ["900001", "900311"]
    assert [(r.index, r.code) for r in mapping.rejected] == [(1, "invalid_deal")]


@pytest.mark.parametrize("change", [{"type": True}, {"entry": True}])
def test_a_boolean_where_a_deal_enum_belongs_is_rejected(change: dict[str, Any]) -> None:
    deals = fixture_deals()
    mapping = map_event(event(body([deals[0] | change, deals[1]])))
    assert [r.index for r in mapping.rejected] == [0]
    assert [f.broker_ref for f in mapping.batch.fills] == ["900057"]


# --- payloads that cannot be mapped at all --------------------------------------------------


def test_a_payload_for_another_login_is_an_account_mismatch() -> None:
    assert invalid_event_code(body(fixture_deals(), login=LOGIN + 1)) == "account_mismatch"


def test_a_payload_for_another_server_is_an_account_mismatch() -> None:
    assert invalid_event_code(body(fixture_deals(), server="Broker-Live")) == "account_mismatch"


@pytest.mark.parametrize("server", [None, ""])
def test_a_connection_without_a_server_accepts_no_payload(server: str | None) -> None:
    # Trade ids embed the server: an unpinned connection could write under any server's ids.
    unpinned = CONNECTION.model_copy(update={"server": server})
    with pytest.raises(InvalidEvent) as refused:
        map_event(event(body(fixture_deals(), server="Broker-Live"), connection=unpinned))
    assert refused.value.code == "account_mismatch"


@pytest.mark.parametrize(
    "raw",
    [b"", b'{"account": ', b"{'account': 1}", b"\xff\xfe{}", b'{"deals": [1,]}'],
)
def test_a_body_that_is_not_json_is_malformed(raw: bytes) -> None:
    assert invalid_event_code(raw) == "malformed_json"


def test_deeply_nested_json_is_malformed() -> None:
    assert invalid_event_code(b'{"deals": ' + b"[" * 100_000) == "malformed_json"


def without(key: str) -> dict[str, Any]:
    document = body(fixture_deals())
    del document[key]
    return document


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(without("account"), id="missing account"),
        pytest.param(without("deals"), id="missing deals"),
        pytest.param(without("server_time_offset_seconds"), id="missing offset"),
        pytest.param(body([]) | {"positions": []}, id="unknown top-level field"),
        pytest.param(body([]) | {"deals": {"0": {}}}, id="deals not a list"),
        pytest.param(body([], offset=15 * 3600), id="offset beyond any time zone"),
        pytest.param(body([], login=0), id="login not positive"),
        pytest.param(body([], server=""), id="empty server"),
        pytest.param(body([], balance="NaN"), id="balance not a number"),
        pytest.param(body([], currency=None), id="no currency"),
        pytest.param(b"[]", id="not an object"),
    ],
)
def test_a_payload_of_the_wrong_shape_is_invalid(payload: dict[str, Any] | bytes) -> None:
    assert invalid_event_code(payload) == "invalid_payload"


# --- snapshot and batch ---------------------------------------------------------------------


def test_the_snapshot_carries_the_reported_balance_as_of_the_signed_send_time() -> None:
    account = mapped(body(fixture_deals())).account
    assert account is not None
    assert (account.currency, str(account.balance), str(account.equity)) == (
        "USD",
        "1069.44",
        "1071.00",
    )
    assert account.as_of == SENT_AT


def test_the_snapshot_says_how_recent_the_deals_it_reflects_are() -> None:
    deals = [cash_deal(1, 2, "1000.00"), *fixture_deals()]
    account = mapped(body(deals)).account
    assert account is not None
    assert account.deals_through == utc(DERIVED["close_time_utc"]) + timedelta(milliseconds=789)


def test_a_snapshot_without_deals_reflects_no_known_deal() -> None:
    account = mapped(body([])).account
    assert account is not None
    assert account.deals_through is None


def test_without_a_send_time_the_snapshot_is_as_of_receipt() -> None:
    account = map_event(event(body([]), sent_at=None)).batch.account
    assert account is not None
    assert account.as_of == RECEIVED_AT


def test_a_payload_with_no_deals_is_just_a_balance_snapshot() -> None:
    batch = mapped(body([]))
    assert (batch.fills, batch.cash_movements) == ((), ())
    assert batch.account is not None


def test_the_batch_belongs_to_the_event_it_was_mapped_from() -> None:
    raw = event(body(fixture_deals()))
    batch = map_event(raw).batch
    assert (batch.event_id, batch.source, batch.connection, batch.received_at) == (
        raw.event_id,
        "webhook",
        CONNECTION,
        RECEIVED_AT,
    )


def test_mapping_the_same_event_twice_gives_the_same_batch() -> None:
    raw = event(body(fixture_deals()))
    assert map_event(raw) == map_event(raw)


# --- finding the mapper ---------------------------------------------------------------------


def test_the_mt5_mapper_is_found_by_broker_name() -> None:
    assert mapper_for("mt5") == BROKER.map


@pytest.mark.parametrize("name", ["nope", "../x", "MT5", "", "mt5.mt5", "os"])
def test_an_unknown_or_unsafe_broker_name_has_no_mapper(name: str) -> None:
    with pytest.raises(InvalidEvent) as raised:
        mapper_for(name)
    assert raised.value.code == "unknown_broker"
