"""A position's charges (an OANDA trade's daily financing) count in the journal row of the round
trip open when they were booked, in any order; and a row's sums are exact, never rounded."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Literal

from hypothesis import given, settings
from hypothesis import strategies as st

from services.writer.journal import PositionCharge, PositionFill, aggregate_position

KEY = "oanda:101-004-1-001:3001"
T0 = datetime(2024, 3, 4, 10, 0, tzinfo=UTC)


def fill(
    ref: int,
    entry: Literal["in", "out"],
    volume: str,
    *,
    hours: int,
    side: Literal["buy", "sell"] = "buy",
    profit: str = "0",
    swap: str = "0",
) -> PositionFill:
    return PositionFill(
        fill_key=f"{KEY}:fill:{ref}",
        position_key=KEY,
        symbol="EUR_USD",
        side=side,
        entry=entry,
        volume=Decimal(volume),
        price=Decimal("1.1"),
        profit=Decimal(profit),
        commission=Decimal(0),
        swap=Decimal(swap),
        fee=Decimal(0),
        executed_at=T0 + timedelta(hours=hours),
        broker_ref=str(ref),
    )


def charge(ref: int, amount: str, *, hours: int, kind: str = "financing") -> PositionCharge:
    return PositionCharge(
        movement_key=f"{KEY}:charge:{ref}",
        position_key=KEY,
        kind=kind,
        amount=Decimal(amount),
        executed_at=T0 + timedelta(hours=hours),
    )


OPEN = fill(1, "in", "10", hours=0)
CLOSE = fill(2, "out", "10", hours=48, side="sell", profit="0.0240", swap="-0.0003")
NIGHTS = [charge(10, "-0.0002", hours=12), charge(11, "-0.0001", hours=36)]


def test_daily_financing_of_an_open_trade_adds_to_its_swap() -> None:
    [row] = aggregate_position(KEY, [OPEN, CLOSE], NIGHTS)
    assert row.swap == Decimal("-0.0006")  # OANDA's TradeSummary financing for the trade
    assert row.profit == Decimal("0.0240") and row.fees == 0


def test_a_charge_of_another_kind_counts_as_fees() -> None:
    [row] = aggregate_position(KEY, [OPEN, CLOSE], [charge(12, "-1.50", hours=5, kind="fee")])
    assert (row.swap, row.fees) == (Decimal("-0.0003"), Decimal("-1.50"))


def test_a_charge_goes_to_the_round_trip_open_when_it_was_booked() -> None:
    reopen = fill(3, "in", "5", hours=72)
    later = charge(13, "-0.0009", hours=80)
    first, second = aggregate_position(KEY, [OPEN, CLOSE, reopen], [*NIGHTS, later])
    assert first.swap == Decimal("-0.0006")
    assert second.swap == Decimal("-0.0009")


def test_charges_without_any_fill_make_no_row_until_the_trade_itself_arrives() -> None:
    assert aggregate_position(KEY, [], NIGHTS) == []


def test_fills_and_charges_in_any_order_make_the_same_row() -> None:
    expected = aggregate_position(KEY, [OPEN, CLOSE], NIGHTS)
    for fills in itertools.permutations([OPEN, CLOSE]):
        for charges in itertools.permutations(NIGHTS):
            assert aggregate_position(KEY, fills, charges) == expected


AMOUNT = st.decimals(
    min_value=Decimal("-999999999999999.999999999999999999"),
    max_value=Decimal("999999999999999.999999999999999999"),
    places=18,
)


def atto_units(value: Decimal) -> int:
    """`value` in units of 10^-18, as an exact integer (no decimal context involved)."""
    sign, digits, exponent = value.as_tuple()
    assert isinstance(exponent, int)
    magnitude: int = int("".join(map(str, digits)) or "0") * 10 ** (exponent + 18)
    return -magnitude if sign else magnitude


@settings(max_examples=200, deadline=None)
@given(profits=st.lists(AMOUNT, min_size=1, max_size=30))
def test_a_rows_sums_of_bounded_amounts_are_exact(profits: list[Decimal]) -> None:
    """Amounts of 33 significant digits would be rounded by Python's default 28-digit context;
    the journal's sums never are."""
    fills = [fill(n, "in", "1", hours=n, profit=str(profit)) for n, profit in enumerate(profits, 1)]
    [row] = aggregate_position(KEY, fills)
    assert atto_units(row.profit) == sum(atto_units(p) for p in profits)
