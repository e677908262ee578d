"""A position's fills, in any order, add up to the journal rows a trader expects."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from services.writer.aggregation import PositionFill, TradeAggregate, aggregate_position

KEY = "mt5:S:1:800001"
T0 = datetime(2024, 6, 3, 6, 0, tzinfo=UTC)


def fill(
    ticket: int,
    entry: str,
    side: str,
    volume: str,
    price: str,
    *,
    profit: str = "0",
    commission: str = "0",
    swap: str = "0",
    minutes: int = 0,
) -> PositionFill:
    return PositionFill(
        fill_key=f"mt5:S:1:deal:{ticket}",
        position_key=KEY,
        symbol="EURUSD",
        side=side,  # type: ignore[arg-type]
        entry=entry,  # type: ignore[arg-type]
        volume=Decimal(volume),
        price=Decimal(price),
        profit=Decimal(profit),
        commission=Decimal(commission),
        swap=Decimal(swap),
        fee=Decimal(0),
        executed_at=T0 + timedelta(minutes=minutes),
        broker_ref=str(ticket),
    )


# The shared fixture's position: IN 0.30 @ 1.085, OUT 0.10 @ 1.0865, OUT 0.20 @ 1.088 (TP).
OPEN = fill(900001, "in", "buy", "0.30", "1.08500", commission="-2.10")
FIRST_CLOSE = fill(
    900057, "out", "sell", "0.10", "1.08650", profit="15.00", commission="-0.70", minutes=120
)
LAST_CLOSE = fill(
    900311,
    "out",
    "sell",
    "0.20",
    "1.08800",
    profit="60.00",
    commission="-1.40",
    swap="-1.36",
    minutes=1620,
)


def only(fills: list[PositionFill]) -> TradeAggregate:
    [row] = aggregate_position(KEY, fills)
    return row


def test_an_opening_fill_alone_is_an_open_trade() -> None:
    row = only([OPEN])
    assert (row.status, row.side, row.volume, row.entry_price) == (
        "open",
        "buy",
        Decimal("0.30"),
        Decimal("1.085"),
    )
    assert row.exit_price is None and row.closed_at is None and row.closed_volume == 0


def test_a_partial_close_keeps_the_trade_open_with_what_was_closed_so_far() -> None:
    row = only([OPEN, FIRST_CLOSE])
    assert row.status == "open"
    assert (row.closed_volume, row.exit_price, row.profit) == (
        Decimal("0.10"),
        Decimal("1.0865"),
        Decimal("15.00"),
    )


def test_the_last_partial_close_closes_it_with_volume_weighted_exit_and_summed_money() -> None:
    row = only([OPEN, FIRST_CLOSE, LAST_CLOSE])
    assert row.status == "closed"
    assert (row.entry_price, row.exit_price) == (Decimal("1.085"), Decimal("1.0875"))
    assert (row.profit, row.commission, row.swap) == (
        Decimal("75.00"),
        Decimal("-4.20"),
        Decimal("-1.36"),
    )
    assert row.opened_at == OPEN.executed_at and row.closed_at == LAST_CLOSE.executed_at
    assert row.fill_count == 3 and row.trade_id == KEY


def test_every_order_of_the_same_fills_gives_the_same_row() -> None:
    rows = {
        tuple(aggregate_position(KEY, p))
        for p in itertools.permutations([OPEN, FIRST_CLOSE, LAST_CLOSE])
    }
    assert len(rows) == 1


def test_a_sell_position_takes_its_side_from_the_opening_fill() -> None:
    row = only([fill(1, "in", "sell", "1", "1.1"), fill(2, "out", "buy", "1", "1.0", minutes=5)])
    assert (row.side, row.status) == ("sell", "closed")


def test_closes_without_their_opening_fill_are_a_closed_trade_of_unknown_entry() -> None:
    row = only([FIRST_CLOSE, LAST_CLOSE])
    assert (row.status, row.side, row.volume, row.entry_price) == (
        "closed",
        "buy",
        Decimal("0.30"),
        None,
    )


def test_a_close_by_counts_as_a_close() -> None:
    row = only([OPEN, fill(5, "out_by", "sell", "0.30", "1.09", profit="150", minutes=3)])
    assert row.status == "closed" and row.exit_price == Decimal("1.09")


def test_a_netting_reversal_closes_the_position_and_opens_the_rest_the_other_way() -> None:
    opening = fill(1, "in", "buy", "1.0", "1.1000")
    reversal = fill(2, "inout", "sell", "1.5", "1.1100", profit="100", commission="-3", minutes=9)
    closed, reversed_ = aggregate_position(KEY, [reversal, opening])
    assert (closed.trade_id, closed.status, closed.volume, closed.exit_price, closed.profit) == (
        KEY,
        "closed",
        Decimal("1.0"),
        Decimal("1.11"),
        Decimal("100"),
    )
    assert closed.commission == Decimal("-3")
    assert (reversed_.trade_id, reversed_.side, reversed_.status, reversed_.volume) == (
        f"{KEY}:2",
        "sell",
        "open",
        Decimal("0.5"),
    )
    assert reversed_.entry_price == Decimal("1.11") and reversed_.profit == 0


_fills = st.lists(
    st.tuples(
        st.sampled_from(["in", "out"]),
        st.integers(min_value=1, max_value=500),
        st.integers(min_value=10_000, max_value=20_000),
        st.integers(min_value=-500, max_value=500),
        st.integers(min_value=0, max_value=10_000),
    ),
    min_size=1,
    max_size=8,
)


@settings(max_examples=200, deadline=None)
@given(specs=_fills, data=st.data())
def test_any_order_of_any_fills_gives_the_same_rows(
    specs: list[tuple[str, int, int, int, int]], data: st.DataObject
) -> None:
    fills = [
        fill(
            i + 1,
            entry,
            "buy" if entry == "in" else "sell",
            str(Decimal(v) / 100),
            str(Decimal(p) / 10_000),
            profit=str(money),
            minutes=minute,
        )
        for i, (entry, v, p, money, minute) in enumerate(specs)
    ]
    shuffled = data.draw(st.permutations(fills))
    assert aggregate_position(KEY, shuffled) == aggregate_position(KEY, fills)
    [row] = aggregate_position(KEY, fills)
    assert row.profit == sum((f.profit for f in fills), Decimal(0))
