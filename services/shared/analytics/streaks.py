"""Win and loss streaks, pure: a sequence of wins and losses in close order reduced to its runs
(`Runs`: the run it starts with, the run it ends with, the longest of each kind), which combine
in order (`Runs.then`), so the rollup keeps one per day and a streak over years is a fold of
days, never a walk over every trade."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import reduce
from itertools import chain
from typing import Literal

_WIN = b"\x01"
_WINS = re.compile(b"\x01+")
_LOSSES = re.compile(b"\x00+")


@dataclass(frozen=True)
class Streak:
    kind: Literal["win", "loss"] | None
    trades: int


@dataclass(frozen=True)
class Streaks:
    longest_win: int
    longest_loss: int
    current: Streak


@dataclass(frozen=True)
class Runs:
    """Some wins and losses in close order, as much as streaks need: the run they start with
    and the run they end with (a count, positive for wins and negative for losses; 0 for none
    at all), and the longest run of each kind. All of one kind, they are one run."""

    first: int = 0
    last: int = 0
    longest_win: int = 0
    longest_loss: int = 0

    @property
    def one_run(self) -> bool:
        return self.longest_win == 0 or self.longest_loss == 0

    def then(self, later: Runs) -> Runs:
        """These runs followed by `later`'s: a run ending here goes on there if of one kind."""
        if not self.first:
            return later
        if not later.first:
            return self
        if (self.last > 0) != (later.first > 0):
            return Runs(
                self.first,
                later.last,
                max(self.longest_win, later.longest_win),
                max(self.longest_loss, later.longest_loss),
            )
        joined = self.last + later.first
        return Runs(
            first=joined if self.one_run else self.first,
            last=joined if later.one_run else later.last,
            longest_win=max(self.longest_win, later.longest_win, joined),
            longest_loss=max(self.longest_loss, later.longest_loss, -joined),
        )

    @property
    def streaks(self) -> Streaks:
        current = Streak(None, 0)
        if self.last:
            current = Streak("win", self.last) if self.last > 0 else Streak("loss", -self.last)
        return Streaks(self.longest_win, self.longest_loss, current)


def runs_of(outcomes: Iterable[int]) -> Runs:
    """The runs of wins (positive) and losses (negative), in the order given."""
    # One byte per outcome (1 a win, 0 a loss), the runs found by regular expressions: every
    # step runs in C, since there is one per trade.
    signs = bytes(map((0).__lt__, outcomes))
    if not signs:
        return Runs()
    head, tail = signs[:1], signs[-1:]
    first = len(signs) - len(signs.lstrip(head))
    last = len(signs) - len(signs.rstrip(tail))
    return Runs(
        first=first if head == _WIN else -first,
        last=last if tail == _WIN else -last,
        longest_win=max(map(len, _WINS.findall(signs)), default=0),
        longest_loss=max(map(len, _LOSSES.findall(signs)), default=0),
    )


def in_order(runs: Iterable[Runs]) -> Runs:
    """Consecutive runs (days, say, in day order) as one."""
    return reduce(Runs.then, runs, Runs())


def merged_outcomes(per_account: Iterable[tuple[uuid.UUID, Sequence[int]]]) -> list[int]:
    """Several accounts' outcomes (each in close order, its close time in epoch microseconds,
    negative for a loss) as one sequence in close order: close time, then account, then the
    account's own order."""
    parts = sorted(per_account, key=lambda part: part[0])
    if len(parts) == 1:
        return list(parts[0][1])
    every = list(chain.from_iterable(outcomes for _, outcomes in parts))
    # Each account's part is in close order already; a stable sort by close time keeps equal
    # times in account order.
    every.sort(key=abs)
    return every


def merged_runs(per_account: Iterable[tuple[uuid.UUID, Sequence[int]]]) -> Runs:
    """The runs of several accounts' outcomes merged in close order."""
    return runs_of(merged_outcomes(per_account))
