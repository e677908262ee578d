"""Reconciliation's comparisons (pure): which deals a broker's history holds that the journal
lacks, and whether a reported balance is what the recorded deals add up to, within rounding.

Rounding is the account currency's minor unit (ISO 4217's digits, as CLDR keeps them: 2 for
USD, 0 for JPY, 3 for KWD): both balances are rounded to it (half even, as brokers book) and any
difference left is drift. A sum of amounts each booked in minor units is exact, so a drift of
one minor unit is a real gap, never noise.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any, Literal

from babel.numbers import get_currency_precision

GapKind = Literal["missing_deals", "balance_drift"]
GAP_KINDS: tuple[GapKind, ...] = ("missing_deals", "balance_drift")
Result = Literal["ok", "gaps", "failed"]
# Cash movements that are not the balance's (MT5's credit is lent by the broker, outside it).
OUTSIDE_BALANCE_KINDS = frozenset({"credit"})


@dataclass(frozen=True)
class HistoryPage:
    """One page of the broker's history as read again: the keys of the fills and cash
    movements it maps to (as the writer keys them)."""

    index: int
    keys: frozenset[str]


@dataclass(frozen=True)
class MissingDeals:
    """The broker's deals no stored fill or movement is, and the pages that carry them."""

    keys: tuple[str, ...]
    pages: tuple[int, ...]


def missing_deals(pages: Sequence[HistoryPage], stored: Iterable[str]) -> MissingDeals:
    """Keys the broker's pages hold and `stored` does not, sorted, with the pages (in order)
    to publish again so the pipeline writes them."""
    have = frozenset(stored)
    keys: set[str] = set()
    wanted: list[int] = []
    for page in pages:
        lacking = page.keys - have
        if lacking:
            keys |= lacking
            wanted.append(page.index)
    return MissingDeals(tuple(sorted(keys)), tuple(wanted))


def minor_unit_digits(currency: str | None) -> int:
    """The digits of the currency's minor unit (2 where it is unknown or not given)."""
    return int(get_currency_precision(currency.upper())) if currency else 2


@dataclass(frozen=True)
class BalanceComparison:
    reported: Decimal
    computed: Decimal
    currency: str | None
    digits: int
    drift: Decimal  # rounded reported - rounded computed

    @property
    def drifted(self) -> bool:
        return self.drift != 0


def compare_balance(
    reported: Decimal, recorded_total: Decimal, currency: str | None
) -> BalanceComparison:
    """The reported balance against the recorded deals' total (deposits + realized P&L -
    charges), each rounded to the currency's minor unit."""
    digits = minor_unit_digits(currency)
    unit = Decimal(1).scaleb(-digits)
    drift = reported.quantize(unit, ROUND_HALF_EVEN) - recorded_total.quantize(
        unit, ROUND_HALF_EVEN
    )
    return BalanceComparison(reported, recorded_total, currency, digits, drift)


@dataclass(frozen=True)
class Reconciliation:
    """What one connection's reconciliation found (or why it could not compare)."""

    connection_id: str
    broker: str
    method: Literal["history", "balance"]
    missing: MissingDeals | None = None
    fetched: int = 0
    balance: BalanceComparison | None = None
    error: str | None = None
    note: str | None = None

    @property
    def gaps(self) -> tuple[GapKind, ...]:
        found: list[GapKind] = []
        if self.missing is not None and self.missing.keys:
            found.append("missing_deals")
        if self.balance is not None and self.balance.drifted:
            found.append("balance_drift")
        return tuple(found)

    @property
    def result(self) -> Result:
        if self.error is not None:
            return "failed"
        return "gaps" if self.gaps else "ok"


def reconciliation_report(found: Reconciliation) -> dict[str, Any]:
    """One connection's result as `reconcile` prints it and the status keeps it (`detail`)."""
    report: dict[str, Any] = {
        "connection_id": found.connection_id,
        "broker": found.broker,
        "method": found.method,
        "result": found.result,
        "gaps": list(found.gaps),
    }
    if found.missing is not None:
        report["missing_deals"] = list(found.missing.keys)
        report["fetched_deals"] = found.fetched
    if found.balance is not None:
        balance = found.balance
        report["balance"] = {
            "reported": str(balance.reported),
            "computed": str(balance.computed),
            "currency": balance.currency,
            "minor_unit_digits": balance.digits,
            "drift": str(balance.drift),
        }
    if found.error is not None:
        report["error"] = found.error
    if found.note is not None:
        report["note"] = found.note
    return report
