"""Reconciliation's comparisons: a broker's deals the journal lacks are found with the pages to
fetch again; a reported balance is compared with the recorded deals' total after both are
rounded to the account currency's minor unit, so only a real difference is drift."""

from __future__ import annotations

from decimal import Decimal

from services.shared.reconciliation import (
    BalanceComparison,
    HistoryPage,
    MissingDeals,
    Reconciliation,
    compare_balance,
    minor_unit_digits,
    missing_deals,
    reconciliation_report,
)


def test_deals_the_journal_lacks_are_found_with_the_pages_that_carry_them() -> None:
    pages = [
        HistoryPage(0, frozenset({"oanda:1:fill:1", "oanda:1:fill:2"})),
        HistoryPage(1, frozenset({"oanda:1:fill:3"})),
        HistoryPage(2, frozenset({"oanda:1:fill:4", "oanda:1:cash:5"})),
    ]
    stored = {"oanda:1:fill:1", "oanda:1:fill:2", "oanda:1:fill:4"}
    assert missing_deals(pages, stored) == MissingDeals(
        ("oanda:1:cash:5", "oanda:1:fill:3"), (1, 2)
    )


def test_a_history_the_journal_holds_entirely_misses_nothing() -> None:
    pages = [HistoryPage(0, frozenset({"a", "b"})), HistoryPage(1, frozenset())]
    assert missing_deals(pages, ["a", "b", "c"]) == MissingDeals((), ())


def test_the_minor_unit_is_the_currencys() -> None:
    assert [minor_unit_digits(c) for c in ("USD", "eur", "JPY", "KWD", None)] == [2, 2, 0, 3, 2]


def test_balances_that_agree_once_rounded_to_the_minor_unit_do_not_drift() -> None:
    assert not compare_balance(Decimal("1069.44"), Decimal("1069.4400"), "USD").drifted
    assert not compare_balance(Decimal("1069.444"), Decimal("1069.436"), "USD").drifted
    assert not compare_balance(Decimal("150320"), Decimal("150319.6"), "JPY").drifted


def test_one_minor_unit_apart_is_drift_whatever_the_currency() -> None:
    usd = compare_balance(Decimal("1069.45"), Decimal("1069.44"), "USD")
    assert usd.drifted and usd.drift == Decimal("0.01")
    assert compare_balance(Decimal("150321"), Decimal("150320"), "JPY").drift == Decimal("1")
    kwd = compare_balance(Decimal("10.001"), Decimal("10.002"), "KWD")
    assert kwd.drift == Decimal("-0.001")
    # The same amounts in a currency of two digits are within rounding.
    assert not compare_balance(Decimal("10.001"), Decimal("10.002"), "USD").drifted


def test_a_result_names_its_gaps_and_a_failure_is_neither_ok_nor_gaps() -> None:
    none = Reconciliation("c", "oanda", "history", missing=MissingDeals((), ()))
    missing = Reconciliation("c", "oanda", "history", missing=MissingDeals(("k",), (0,)))
    drift = Reconciliation(
        "c", "mt5", "balance", balance=compare_balance(Decimal("2"), Decimal("1"), "USD")
    )
    failed = Reconciliation("c", "oanda", "history", error="broker unreachable")
    assert (none.result, none.gaps) == ("ok", ())
    assert (missing.result, missing.gaps) == ("gaps", ("missing_deals",))
    assert (drift.result, drift.gaps) == ("gaps", ("balance_drift",))
    assert (failed.result, failed.gaps) == ("failed", ())


def test_the_report_says_what_was_compared_and_found() -> None:
    balance = BalanceComparison(Decimal("1069.54"), Decimal("1069.44"), "USD", 2, Decimal("0.10"))
    found = Reconciliation("c-1", "mt5", "balance", balance=balance)
    assert reconciliation_report(found) == {
        "connection_id": "c-1",
        "broker": "mt5",
        "method": "balance",
        "result": "gaps",
        "gaps": ["balance_drift"],
        "balance": {
            "reported": "1069.54",
            "computed": "1069.44",
            "currency": "USD",
            "minor_unit_digits": 2,
            "drift": "0.10",
        },
    }
    fetched = Reconciliation(
        "c-2", "oanda", "history", missing=MissingDeals(("k1", "k2"), (3,)), fetched=2
    )
    assert reconciliation_report(fetched)["missing_deals"] == ["k1", "k2"]
    assert reconciliation_report(fetched)["fetched_deals"] == 2
