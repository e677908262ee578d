"""The canonical records hold only what the journal can store exactly: a value outside is refused
with its reason where it enters, never altered on the way (1e200000 must not become 0)."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from pydantic import ValidationError

from services.shared.canonical import (
    AMOUNT_PLACES,
    AccountSnapshot,
    CashMovement,
    Fill,
    decimal_places,
)

AT = datetime(2024, 6, 4, 9, 0, tzinfo=UTC)


def fill(**changes: Any) -> Fill:
    values: dict[str, Any] = {
        "fill_key": "mt5:S:1:deal:1",
        "position_key": "mt5:S:1:9",
        "symbol": "EURUSD",
        "side": "buy",
        "entry": "in",
        "volume": Decimal("0.10"),
        "price": Decimal("1.08500"),
        "executed_at": AT,
        "broker_time": "1717488000000",
        "broker_ref": "1",
    }
    return Fill(**(values | changes))


def refusal(**changes: Any) -> str:
    with pytest.raises(ValidationError) as refused:
        fill(**changes)
    return str(refused.value)


@pytest.mark.parametrize(
    ("text", "places"),
    [
        ("1", 0),
        ("1.500", 1),
        ("0.000000000000000001", 18),
        ("1E+5", 0),
        ("1.0000000000000000000000000000000000", 0),
        ("-0.30000000000000004", 17),
        ("0E-20", 0),
        ("0.000", 0),
        ("-0", 0),
        ("123456789012345.123456789012345678", 18),
    ],
)
def test_decimal_places_are_counted_exactly_without_trailing_zeros(text: str, places: int) -> None:
    assert decimal_places(Decimal(text)) == places


@pytest.mark.parametrize(
    "value",
    [
        Decimal("999999999999999.999999999999999999"),  # 33 digits: kept, not rounded
        Decimal("-0.30000000000000004"),  # a float's shortest text
        Decimal("1.50000000000000000000000000"),  # trailing zeros are no extra places
        Decimal("1E-18"),
    ],
)
def test_every_amount_the_journal_holds_is_kept_exactly(value: Decimal) -> None:
    kept = fill(profit=value).profit
    assert kept == value and str(kept) == str(value)


@pytest.mark.parametrize(
    ("value", "why"),
    [
        (Decimal("1e200000"), "smaller than 10^15"),
        (Decimal("1e999999"), "smaller than 10^15"),
        (Decimal("-1000000000000000"), "smaller than 10^15"),
        (Decimal("NaN"), "finite"),
        (Decimal("Infinity"), "finite"),
        (Decimal("1E-19"), f"at most {AMOUNT_PLACES} decimal places"),
    ],
)
def test_an_amount_beyond_the_journal_is_refused_with_its_reason(value: Decimal, why: str) -> None:
    for field in ("volume", "price", "profit", "commission", "swap", "fee"):
        assert why in refusal(**{field: value}), field


def test_a_balance_beyond_the_journal_is_refused_not_stored_as_zero() -> None:
    with pytest.raises(ValidationError, match="smaller than 10"):
        AccountSnapshot(balance=Decimal("1e200000"), as_of=AT)


@pytest.mark.parametrize(
    ("field", "text"),
    [
        ("comment", "a lone surrogate \ud800 here"),
        ("symbol", "EUR\x00USD"),
        ("broker_ref", "\udfff"),
        ("symbol", "X" * 65),
        ("comment", "x" * 1025),
        ("fill_key", ""),
    ],
)
def test_text_the_database_cannot_store_as_given_is_refused(field: str, text: str) -> None:
    refusal(**{field: text})


def test_valid_unicode_text_of_any_script_is_kept() -> None:
    assert fill(comment="ordre clôturé · 止损 · 🚀").comment == "ordre clôturé · 止损 · 🚀"


@pytest.mark.parametrize(
    "when",
    [datetime(1969, 12, 31, 23, 59, tzinfo=UTC), datetime(2200, 1, 1, tzinfo=UTC)],
)
def test_a_time_outside_1970_to_2200_is_refused(when: datetime) -> None:
    assert "between 1970 and 2200" in refusal(executed_at=when)


def test_a_position_charge_names_its_position() -> None:
    charge = CashMovement(
        movement_key="oanda:A:txn:7:trade:3",
        kind="financing",
        amount=Decimal("-0.0002"),
        executed_at=AT,
        broker_time="2024-06-04T09:00:00Z",
        broker_ref="7",
        position_key="oanda:A:3",
    )
    assert charge.position_key == "oanda:A:3"
