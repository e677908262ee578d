"""What the figures of some accounts over some days are made of (`Totals`), pure: each
account's tally, the runs of each group of accounts whose streaks are asked for, their days
added up, their opening balance and their trades' durations. The API reads them from the
rollup in SQL (rollup_reading.py); `totals_of_days` computes the same from day summaries (the
journal's, recomputed from scratch, or the rollup's rows)."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from itertools import chain

from services.shared.analytics.days import DURATION_BOUNDS, DaySummary
from services.shared.analytics.metrics import (
    Anchor,
    DayTotal,
    Tally,
    day_totals,
    median,
    opening_balance,
    tally,
)
from services.shared.analytics.streaks import Runs, merged_outcomes, runs_of

Group = frozenset[uuid.UUID]


@dataclass(frozen=True)
class Totals:
    """Some accounts over the days [first, last] (either open).

    `tallies` and `group_runs` (of each group of two or more accounts asked for), the duration
    counts (per bucket of DURATION_BOUNDS) and the median are of the days in range; `days` are
    all the accounts' days, before `first` too, since their balances start from `opening`."""

    tallies: dict[uuid.UUID, Tally]
    group_runs: dict[Group, Runs]
    opening: Decimal
    days: tuple[DayTotal, ...]
    duration_counts: tuple[int, ...]
    median_duration_micros: float | None

    def runs(self, group: Group) -> Runs:
        """The runs of these accounts' wins and losses together, in close order."""
        if len(group) == 1:
            (account,) = group
            return self.tallies[account].runs
        return self.group_runs[group] if group else Runs()


def within(day: date, first: date | None, last: date | None) -> bool:
    return (first is None or day >= first) and (last is None or day <= last)


def totals_of_days(
    accounts: Sequence[uuid.UUID],
    days: Iterable[DaySummary],
    anchors: dict[uuid.UUID, Anchor],
    groups: Iterable[Group] = (),
    first: date | None = None,
    last: date | None = None,
) -> Totals:
    """The totals of `accounts` from their day summaries (any others are left out): each
    group's runs from all its wins and losses merged in close order."""
    per_account: dict[uuid.UUID, list[DaySummary]] = {a: [] for a in accounts}
    for d in sorted(days, key=lambda d: d.day):
        if d.account_id in per_account:
            per_account[d.account_id].append(d)
    every = [d for own in per_account.values() for d in own]
    in_range = {
        account: [d for d in own if within(d.day, first, last)]
        for account, own in per_account.items()
    }
    selected = list(chain.from_iterable(in_range.values()))
    counts = [sum(column) for column in zip(*(d.duration_buckets for d in selected), strict=True)]
    return Totals(
        tallies={account: tally(account, own) for account, own in in_range.items()},
        group_runs={
            group: runs_of(
                merged_outcomes(
                    (a, list(chain.from_iterable(d.outcomes for d in in_range[a]))) for a in group
                )
            )
            for group in groups
            if len(group) > 1
        },
        opening=sum(
            (opening_balance(own, anchors.get(a)) for a, own in per_account.items()),
            Decimal(0),
        ),
        days=tuple(day_totals(every)),
        duration_counts=tuple(counts or [0] * len(DURATION_BOUNDS)),
        median_duration_micros=median(sorted(chain.from_iterable(d.durations for d in selected))),
    )
