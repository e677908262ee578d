"""A position's fills, in any order, add up to the journal rows a trader expects.

The partial-close case is the shared MT5 fixture; its `derived_closed_trade` is the answer key.
"""

from __future__ import annotations

import itertools
import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, Literal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.shared.canonical import Side
from services.writer.journal import (
    PositionFill,
    PositionFold,
    TradeAggregate,
    aggregate_position,
    fold_position,
)
from tests.support.builders import FIXTURES

Entry = Literal["in", "out", "inout", "out_by"]

KEY = "mt5:Broker-Demo:52557820:800001"
T0 = datetime(2024, 6, 3, 6, 0, tzinfo=UTC)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ENTRIES: dict[int, Entry] = {0: "in", 1: "out", 2: "inout", 3: "out_by"}
_SIDES: dict[int, Side] = {0: "buy", 1: "sell"}


def _fixture() -> dict[str, Any]:
    text = (FIXTURES / "mt5" / "partial_close_constructed.json").read_text()
    document: dict[str, Any] = json.loads(text, parse_float=Decimal)
    return document


def _from_deal(deal: dict[str, Any], server_offset_seconds: int = 10800) -> PositionFill:
    """A fixture deal as the writer reads it back: UTC time, exact amounts."""
    return PositionFill(
        fill_key=f"mt5:Broker-Demo:52557820:deal:{deal['ticket']}",
        position_key=KEY,
        symbol=deal["symbol"],
        side=_SIDES[deal["type"]],
        entry=_ENTRIES[deal["entry"]],
        volume=Decimal(deal["volume"]),
        price=Decimal(deal["price"]),
        profit=Decimal(deal["profit"]),
        commission=Decimal(deal["commission"]),
        swap=Decimal(deal["swap"]),
        fee=Decimal(deal["fee"]),
        executed_at=_EPOCH
        + timedelta(milliseconds=deal["time_msc"])
        - timedelta(seconds=server_offset_seconds),
        broker_ref=str(deal["ticket"]),
    )


FIXTURE = _fixture()
DERIVED = FIXTURE["derived_closed_trade"]
# IN 0.30 @ 1.085, OUT 0.10 @ 1.0865 (+15.00), OUT 0.20 @ 1.088 (+60.00, take profit).
OPEN, FIRST_CLOSE, LAST_CLOSE = (_from_deal(d) for d in FIXTURE["deals"])


def fill(
    ticket: int,
    entry: Entry,
    side: Side,
    volume: str,
    price: str,
    *,
    profit: str = "0",
    commission: str = "0",
    swap: str = "0",
    fee: str = "0",
    minutes: int = 0,
) -> PositionFill:
    return PositionFill(
        fill_key=f"mt5:Broker-Demo:52557820:deal:{ticket}",
        position_key=KEY,
        symbol="EURUSD",
        side=side,
        entry=entry,
        volume=Decimal(volume),
        price=Decimal(price),
        profit=Decimal(profit),
        commission=Decimal(commission),
        swap=Decimal(swap),
        fee=Decimal(fee),
        executed_at=T0 + timedelta(minutes=minutes),
        broker_ref=str(ticket),
    )


def only_row(fills: list[PositionFill]) -> TradeAggregate:
    [row] = aggregate_position(KEY, fills)
    return row


def fixture_time(text: str) -> datetime:
    """A fixture time such as `2024-06-04T09:00:00Z (last OUT deal)`."""
    return datetime.fromisoformat(text.split(" ")[0].replace("Z", "+00:00"))


# --- the fixture's partial closes, step by step ---------------------------------------------


def test_the_fixture_deals_read_back_at_their_utc_times() -> None:
    assert OPEN.executed_at.replace(microsecond=0) == fixture_time(DERIVED["open_time_utc"])
    assert LAST_CLOSE.executed_at.replace(microsecond=0) == fixture_time(DERIVED["close_time_utc"])


def test_after_the_opening_deal_alone_the_trade_is_open_at_its_entry() -> None:
    row = only_row([OPEN])
    assert (row.status, row.side, row.symbol) == ("open", "buy", "EURUSD")
    assert (row.volume, row.closed_volume) == (Decimal("0.30"), Decimal(0))
    assert row.entry_price == Decimal("1.085")
    assert (row.exit_price, row.closed_at) == (None, None)
    assert row.opened_at == OPEN.executed_at
    assert (row.profit, row.commission) == (Decimal(0), Decimal("-2.10"))
    assert row.fill_count == 1


def test_after_the_first_partial_close_the_trade_stays_open_with_what_was_closed() -> None:
    row = only_row([OPEN, FIRST_CLOSE])
    assert row.status == "open"
    assert (row.volume, row.closed_volume) == (Decimal("0.30"), Decimal("0.10"))
    assert row.exit_price == Decimal("1.0865")
    assert row.profit == Decimal("15.00")
    assert row.closed_at is None
    assert row.fill_count == 2


def test_after_the_last_partial_close_the_trade_is_the_fixtures_derived_trade() -> None:
    row = only_row([OPEN, FIRST_CLOSE, LAST_CLOSE])
    avg_exit = Decimal(DERIVED["avg_exit"].split("=")[-1].strip())
    assert row.status == "closed"
    assert (row.trade_id, row.position_key, row.side) == (KEY, KEY, "buy")
    assert row.volume == row.closed_volume == DERIVED["qty_lots"]
    assert (row.entry_price, row.exit_price) == (DERIVED["avg_entry"], avg_exit)
    assert (row.profit, row.commission, row.swap, row.fees) == (
        DERIVED["gross_profit"],
        DERIVED["commission"],
        DERIVED["swap"],
        Decimal(0),
    )
    assert row.profit + row.commission + row.swap == DERIVED["net"]
    assert row.opened_at == OPEN.executed_at
    assert row.closed_at == LAST_CLOSE.executed_at
    assert row.fill_count == 3


def test_the_closing_time_is_the_last_close_even_when_it_arrives_first() -> None:
    row = only_row([LAST_CLOSE, OPEN, FIRST_CLOSE])
    assert row.closed_at == LAST_CLOSE.executed_at


def test_prices_are_exact_decimals_and_money_keeps_its_cents() -> None:
    row = only_row([OPEN, FIRST_CLOSE, LAST_CLOSE])
    assert str(row.exit_price) == "1.0875"
    assert str(row.commission) == "-4.20"
    assert str(row.profit) == "75.00"


@pytest.mark.parametrize(
    "order",
    list(itertools.permutations([OPEN, FIRST_CLOSE, LAST_CLOSE])),
    ids=lambda order: "-".join(f.broker_ref for f in order),
)
def test_every_arrival_order_of_the_fixture_gives_the_same_row(
    order: tuple[PositionFill, ...],
) -> None:
    assert aggregate_position(KEY, order) == aggregate_position(
        KEY, [OPEN, FIRST_CLOSE, LAST_CLOSE]
    )


# --- sides, missing opens, close-by ---------------------------------------------------------


def test_a_sell_position_takes_its_side_from_the_opening_deal() -> None:
    row = only_row(
        [
            fill(1, "in", "sell", "0.50", "1.2000"),
            fill(2, "out", "buy", "0.20", "1.1900", profit="20", minutes=5),
            fill(3, "out", "buy", "0.30", "1.1800", profit="60", minutes=9),
        ]
    )
    assert (row.side, row.status) == ("sell", "closed")
    assert (row.entry_price, row.exit_price) == (Decimal("1.2"), Decimal("1.184"))
    assert row.profit == Decimal("80")


def test_closes_whose_opening_predates_the_sync_are_a_closed_trade_of_unknown_entry() -> None:
    row = only_row([FIRST_CLOSE, LAST_CLOSE])
    assert row.status == "closed"
    assert row.side == "buy"  # the opposite of the closing deals
    assert row.volume == row.closed_volume == Decimal("0.30")
    assert (row.entry_price, row.opened_at) == (None, None)
    assert row.exit_price == Decimal("1.0875")
    assert row.closed_at == LAST_CLOSE.executed_at
    assert row.profit == Decimal("75.00")


def test_a_close_by_closes_the_position() -> None:
    close_by = fill(5, "out_by", "sell", "0.30", "1.0900", profit="150", minutes=3)
    row = only_row([OPEN, close_by])
    assert row.status == "closed"
    assert (row.closed_volume, row.exit_price) == (Decimal("0.30"), Decimal("1.09"))
    assert row.closed_at == close_by.executed_at


def test_a_partial_close_by_leaves_the_rest_open() -> None:
    row = only_row([OPEN, fill(5, "out_by", "sell", "0.10", "1.0900", profit="50", minutes=3)])
    assert (row.status, row.closed_volume) == ("open", Decimal("0.10"))


def test_adds_to_a_position_average_its_entry_by_volume() -> None:
    row = only_row(
        [
            fill(1, "in", "buy", "1.0", "1.1000"),
            fill(2, "in", "buy", "3.0", "1.2000", minutes=1),
            fill(3, "out", "sell", "4.0", "1.3000", minutes=2),
        ]
    )
    assert (row.volume, row.entry_price, row.status) == (Decimal("4.0"), Decimal("1.175"), "closed")


def test_a_position_with_no_fills_has_no_rows() -> None:
    assert aggregate_position(KEY, []) == []


# --- netting reversals ----------------------------------------------------------------------

REVERSE_OPEN = fill(1, "in", "buy", "1.0", "1.1000", commission="-2")
REVERSAL = fill(2, "inout", "sell", "1.5", "1.1100", profit="100", commission="-3", minutes=9)


def test_a_reversal_closes_the_original_row_with_its_profit() -> None:
    closed, _ = aggregate_position(KEY, [REVERSAL, REVERSE_OPEN])
    assert (closed.trade_id, closed.status, closed.side) == (KEY, "closed", "buy")
    assert (closed.volume, closed.closed_volume) == (Decimal("1.0"), Decimal("1.0"))
    assert (closed.entry_price, closed.exit_price) == (Decimal("1.1"), Decimal("1.11"))
    assert (closed.profit, closed.commission) == (Decimal("100"), Decimal("-5"))
    assert closed.closed_at == REVERSAL.executed_at


def test_a_reversal_opens_the_remainder_the_other_way_as_its_own_row() -> None:
    _, reversed_ = aggregate_position(KEY, [REVERSAL, REVERSE_OPEN])
    assert (reversed_.trade_id, reversed_.position_key) == (f"{KEY}:2", KEY)
    assert (reversed_.status, reversed_.side, reversed_.volume) == ("open", "sell", Decimal("0.5"))
    assert (reversed_.entry_price, reversed_.exit_price) == (Decimal("1.11"), None)
    assert reversed_.opened_at == REVERSAL.executed_at
    assert (reversed_.profit, reversed_.commission) == (Decimal(0), Decimal(0))


def test_closing_the_reversed_remainder_closes_its_row_only() -> None:
    close = fill(3, "out", "buy", "0.5", "1.1000", profit="50", minutes=20)
    closed, reversed_ = aggregate_position(KEY, [close, REVERSAL, REVERSE_OPEN])
    assert closed.profit == Decimal("100")
    assert (reversed_.status, reversed_.closed_volume) == ("closed", Decimal("0.5"))
    assert (reversed_.exit_price, reversed_.profit) == (Decimal("1.1"), Decimal("50"))


# --- properties over generated positions ----------------------------------------------------

_fill_specs = st.lists(
    st.tuples(
        st.sampled_from(["in", "out", "inout", "out_by"]),
        st.sampled_from(["buy", "sell"]),
        st.integers(min_value=1, max_value=500),  # volume in hundredths of a lot
        st.integers(min_value=9_000, max_value=13_000),  # price in 1/10000
        st.integers(min_value=-5_000, max_value=5_000),  # money in cents
        st.integers(min_value=0, max_value=5),  # minutes: few values, so times often tie
    ),
    min_size=1,
    max_size=10,
)


def _generated(
    specs: list[tuple[str, str, int, int, int, int]], tickets: list[int]
) -> list[PositionFill]:
    entries: dict[str, Entry] = {"in": "in", "out": "out", "inout": "inout", "out_by": "out_by"}
    sides: dict[str, Side] = {"buy": "buy", "sell": "sell"}
    return [
        fill(
            ticket,
            entries[entry],
            sides[side],
            str(Decimal(volume) / 100),
            str(Decimal(price) / 10_000),
            profit=str(Decimal(money) / 100),
            commission=str(Decimal(-(abs(money) % 700)) / 100),
            swap=str(Decimal(money % 300 - 150) / 100),
            fee=str(Decimal(abs(money) % 50) / 100),
            minutes=minute,
        )
        for ticket, (entry, side, volume, price, money, minute) in zip(tickets, specs, strict=False)
    ]


def _drawn(
    specs: list[tuple[str, str, int, int, int, int]], data: st.DataObject
) -> list[PositionFill]:
    """The generated fills, under tickets drawn unique."""
    tickets = data.draw(
        st.lists(
            st.integers(min_value=1, max_value=10**9),
            min_size=len(specs),
            max_size=len(specs),
            unique=True,
        ),
        label="tickets",
    )
    return _generated(specs, tickets)


@settings(max_examples=200, deadline=None)
@given(specs=_fill_specs, data=st.data())
def test_any_order_of_the_same_fills_gives_identical_rows(
    specs: list[tuple[str, str, int, int, int, int]], data: st.DataObject
) -> None:
    fills = _drawn(specs, data)
    shuffled = data.draw(st.permutations(fills), label="arrival order")
    assert aggregate_position(KEY, shuffled) == aggregate_position(KEY, fills)


@settings(max_examples=200, deadline=None)
@given(specs=_fill_specs)
def test_every_fills_money_lands_in_exactly_one_row(
    specs: list[tuple[str, str, int, int, int, int]],
) -> None:
    fills = _generated(specs, list(range(1, len(specs) + 1)))
    rows = aggregate_position(KEY, fills)
    for money in ("profit", "commission", "swap"):
        assert sum((getattr(r, money) for r in rows), Decimal(0)) == sum(
            (getattr(f, money) for f in fills), Decimal(0)
        )
    assert sum((r.fees for r in rows), Decimal(0)) == sum((f.fee for f in fills), Decimal(0))
    assert len({r.trade_id for r in rows}) == len(rows)
    assert all(r.position_key == KEY for r in rows)


@settings(max_examples=200, deadline=None)
@given(
    ins=st.lists(st.integers(min_value=1, max_value=500), min_size=1, max_size=4),
    outs=st.lists(st.integers(min_value=1, max_value=500), max_size=4),
)
def test_a_hedging_position_is_closed_exactly_when_its_closes_cover_its_opens(
    ins: list[int], outs: list[int]
) -> None:
    fills = [fill(i, "in", "buy", str(Decimal(v) / 100), "1.1") for i, v in enumerate(ins, 1)]
    fills += [
        fill(100 + i, "out", "sell", str(Decimal(v) / 100), "1.2", minutes=1 + i)
        for i, v in enumerate(outs)
    ]
    row = only_row(fills)
    in_volume = Decimal(sum(ins)) / 100
    out_volume = Decimal(sum(outs)) / 100
    assert (row.volume, row.closed_volume) == (in_volume, out_volume)
    assert row.status == ("closed" if out_volume >= in_volume else "open")
    assert (row.closed_at is not None) == (row.status == "closed")


# --- a position that goes flat and opens again ----------------------------------------------
# IBKR keys a position by instrument, so one key sees round trip after round trip. MT5 and
# OANDA keys never reopen: every case above is unchanged by this rule.

FIRST_OPEN = fill(1, "in", "buy", "100", "10.00", commission="-1")
FIRST_CLOSE_ALL = fill(2, "out", "sell", "100", "11.00", profit="100", commission="-1", minutes=5)
SECOND_OPEN = fill(3, "in", "sell", "50", "12.00", commission="-0.5", minutes=10)
SECOND_CLOSE_ALL = fill(4, "out", "buy", "50", "11.50", profit="25", minutes=15)


def test_a_position_that_went_flat_and_opens_again_is_a_second_row() -> None:
    first, second = aggregate_position(KEY, [FIRST_OPEN, FIRST_CLOSE_ALL, SECOND_OPEN])
    assert (first.trade_id, first.status, first.side) == (KEY, "closed", "buy")
    assert (first.volume, first.closed_volume, first.profit) == (
        Decimal("100"),
        Decimal("100"),
        Decimal("100"),
    )
    assert (second.trade_id, second.position_key) == (f"{KEY}:3", KEY)
    assert (second.status, second.side, second.volume) == ("open", "sell", Decimal("50"))
    assert (second.entry_price, second.opened_at) == (Decimal("12"), SECOND_OPEN.executed_at)
    assert (second.profit, second.commission, second.fill_count) == (
        Decimal(0),
        Decimal("-0.5"),
        1,
    )


def test_each_round_trip_closes_its_own_row_with_its_own_money() -> None:
    first, second = aggregate_position(
        KEY, [SECOND_CLOSE_ALL, SECOND_OPEN, FIRST_CLOSE_ALL, FIRST_OPEN]
    )
    assert (first.profit, first.commission, first.closed_at) == (
        Decimal("100"),
        Decimal("-2"),
        FIRST_CLOSE_ALL.executed_at,
    )
    assert (second.status, second.closed_volume, second.exit_price) == (
        "closed",
        Decimal("50"),
        Decimal("11.5"),
    )
    assert (second.profit, second.closed_at) == (Decimal("25"), SECOND_CLOSE_ALL.executed_at)


def test_three_round_trips_are_three_rows_keyed_by_their_opening_fills() -> None:
    third_open = fill(5, "in", "buy", "10", "11.00", minutes=20)
    rows = aggregate_position(
        KEY, [FIRST_OPEN, FIRST_CLOSE_ALL, SECOND_OPEN, SECOND_CLOSE_ALL, third_open]
    )
    assert [(r.trade_id, r.status) for r in rows] == [
        (KEY, "closed"),
        (f"{KEY}:3", "closed"),
        (f"{KEY}:5", "open"),
    ]


def test_an_add_while_still_open_stays_in_the_same_row() -> None:
    partial = fill(2, "out", "sell", "40", "11.00", profit="40", minutes=5)
    add = fill(3, "in", "buy", "20", "10.50", minutes=10)
    row = only_row([FIRST_OPEN, partial, add])
    assert (row.volume, row.closed_volume, row.status) == (Decimal("120"), Decimal("40"), "open")


def test_opening_again_after_an_exact_reversal_close_is_a_new_row() -> None:
    # A netting INOUT that closes exactly what is open and reopens nothing leaves the key flat.
    exact_reversal = fill(2, "inout", "sell", "100", "11.00", profit="100", minutes=5)
    rows = aggregate_position(KEY, [FIRST_OPEN, exact_reversal, SECOND_OPEN])
    assert [(r.trade_id, r.status, r.side) for r in rows] == [
        (KEY, "closed", "buy"),
        (f"{KEY}:3", "open", "sell"),
    ]


def test_closes_of_an_unseen_opening_leave_nothing_open_and_a_later_opening_is_its_own_row() -> (
    None
):
    # A first statement often starts with closes of what was opened before its period: those
    # are a closed trade of unknown entry, and what opens afterwards is a trade of its own
    # (not an add to the closed one, which would lose the open position).
    early_close = fill(1, "out", "sell", "100", "12.00", profit="200")
    reopened = fill(2, "in", "buy", "50", "10.00", minutes=5)
    closed, opened = aggregate_position(KEY, [early_close, reopened])
    assert (closed.trade_id, closed.status, closed.volume, closed.profit) == (
        KEY,
        "closed",
        Decimal("100"),
        Decimal("200"),
    )
    assert (opened.trade_id, opened.status, opened.volume, opened.opened_at) == (
        f"{KEY}:2",
        "open",
        Decimal("50"),
        reopened.executed_at,
    )


# --- folding new fills into a stored position (the writer's incremental path) ----------------


def _arrival_order(fill: PositionFill) -> tuple[datetime, int, str]:
    return (fill.executed_at, int(fill.broker_ref), fill.fill_key)


def _write(
    batches: list[list[PositionFill]],
) -> tuple[dict[str, TradeAggregate], list[PositionFill], int]:
    """What the writer keeps after these batches: each batch's new fills (a fill delivered again
    is not new) folded into the stored fold, or every stored fill folded again when one of them
    comes before the fold's last; the fold goes through its stored JSON form in between. The
    rows, the fills stored, and how many batches were folded incrementally."""
    rows: dict[str, TradeAggregate] = {}
    stored: dict[str, PositionFill] = {}
    fold: PositionFold | None = None
    incremental = 0
    for batch in batches:
        new = {f.fill_key: f for f in batch if f.fill_key not in stored}
        stored.update(new)
        if not new:
            continue
        if fold is not None and fold.extends_to(new.values()):
            changed, fold = fold_position(KEY, new.values(), fold)
            rows.update({r.trade_id: r for r in changed})
            incremental += 1
        else:
            changed, fold = fold_position(KEY, stored.values())
            rows = {r.trade_id: r for r in changed}
        assert fold is not None
        fold = PositionFold.decoded(KEY, fold.encoded())
    return rows, list(stored.values()), incremental


@settings(max_examples=200, deadline=None)
@given(specs=_fill_specs, data=st.data())
def test_folding_each_batchs_new_fills_into_the_stored_fold_gives_the_full_recomputation(
    specs: list[tuple[str, str, int, int, int, int]], data: st.DataObject
) -> None:
    fills = _drawn(specs, data)
    # In the broker's order (what a live sender delivers) or any other, and some delivered again.
    in_order = data.draw(st.booleans(), label="in order")
    arrivals = (
        sorted(fills, key=_arrival_order)
        if in_order
        else data.draw(st.permutations(fills), label="arrival order")
    )
    replays = data.draw(st.lists(st.sampled_from(fills), max_size=4), label="replays")
    for replay in replays:
        at = data.draw(st.integers(min_value=0, max_value=len(arrivals)), label="replayed at")
        arrivals.insert(at, replay)
    ends = data.draw(
        st.lists(st.booleans(), min_size=len(arrivals), max_size=len(arrivals)),
        label="a batch ends after each arrival",
    )
    batches: list[list[PositionFill]] = [[]]
    for arrival, ends_batch in zip(arrivals, ends, strict=True):
        batches[-1].append(arrival)
        if ends_batch:
            batches.append([])

    rows, stored, incremental = _write(batches)

    assert sorted(stored, key=_arrival_order) == sorted(fills, key=_arrival_order)
    assert rows == {r.trade_id: r for r in aggregate_position(KEY, fills)}
    # In the broker's order (a replay may arrive before its original), every batch after the
    # first folds incrementally.
    if in_order and not replays:
        assert incremental == len([b for b in batches if b]) - 1


def test_a_netting_position_folded_one_fill_at_a_time_never_reads_its_history_again() -> None:
    # Opened, added to, reversed twice, closed: every fill after the last, one batch each.
    fills = [
        fill(1, "in", "buy", "1.0", "1.1000", commission="-3.5"),
        fill(2, "in", "buy", "0.5", "1.1010", minutes=1),
        fill(3, "inout", "sell", "2.0", "1.1050", profit="75", minutes=2),
        fill(4, "inout", "buy", "1.0", "1.1000", profit="25", minutes=3),
        fill(5, "out", "sell", "0.5", "1.1020", profit="10", minutes=4),
    ]
    rows, _, incremental = _write([[f] for f in fills])
    assert incremental == len(fills) - 1
    assert rows == {r.trade_id: r for r in aggregate_position(KEY, fills)}
    assert [r.status for r in aggregate_position(KEY, fills)] == ["closed", "closed", "closed"]
