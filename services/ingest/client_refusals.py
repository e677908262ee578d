"""Refusal budgets (POSCAL_REFUSALS_PER_CLIENT, in this replica's memory), and an over-budget
client's refusals folded into one record per window: no client grows the attempt log endlessly."""

from __future__ import annotations

import dataclasses
import heapq
import itertools
import time
import uuid
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from datetime import datetime

from services.ingest.audit import Attempt
from services.shared.token_buckets import TokenBuckets

FOLD_SECONDS = 60.0
_MAX_FOLDS = 100_000

Budget = Hashable


def client_budget(source: str) -> Budget:
    """Whose budget a refusal of an unverified request spends: its source's."""
    return source


def sender_budget(source: str, connection_id: uuid.UUID) -> Budget:
    """Whose budget a refusal of a verified delivery spends: its sender's, on that connection."""
    return (source, connection_id)


@dataclass
class _Fold:
    until: float
    serial: int
    folded: int = 0
    first_folded_at: datetime | None = None
    last: Attempt | None = None

    def summary(self) -> Attempt | None:
        """One record for every attempt folded into this window, or None if there were none."""
        if self.last is None:
            return None
        return dataclasses.replace(self.last, attempts=self.folded)


class ClientRefusals:
    """Every refusal but our own 503s spends a budget: a refusal of a delivery that verified
    spends its sender's (`sender_budget`: the client address and the connection), any other one
    the client address's (`client_budget`), so one tenant's own replays never spend another's.

    Over budget, refusals are folded, so that no client can grow the attempt log, or the log
    output, without bound: the first of each window (per budget, connection, status and reason)
    is recorded as it comes, the rest become one record that stands for all of them
    (`attempts`). Folding only changes what is recorded, never an answer; and attempts held in
    an open window are what the audit's progress mark must not pass (`held_since`)."""

    def __init__(
        self,
        spec: str,
        *,
        fold_seconds: float = FOLD_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._budget = TokenBuckets(spec, clock)
        self._fold_seconds = fold_seconds
        self._clock = clock
        self._serials = itertools.count()
        # Open windows, oldest first (a window reopened moves to the end).
        self._folds: dict[Hashable, _Fold] = {}
        # Records of windows that ended, not handed to the audit yet.
        self._ended: list[tuple[int, Attempt]] = []
        # Windows whose folded attempts are not handed over yet (open or ended), by serial; and
        # the earliest attempt each folded, as a heap whose entries of handed-over windows are
        # dropped when they reach the top.
        self._holding: set[int] = set()
        self._held: list[tuple[datetime, int]] = []

    def wait(self, budget: Budget) -> int | None:
        """Seconds until `budget` may be spent again, or None if it is within budget."""
        return self._budget.wait(budget)

    def refused(self, budget: Budget, attempt: Attempt) -> bool:
        """Count an answered refusal against `budget`: True if it is to be recorded now (within
        budget, or the first of its window), False if it was folded into its window's record."""
        if self._budget.wait(budget) is None:
            self._budget.spend(budget)
            return True
        key = (budget, attempt.connection_id, attempt.status_code, attempt.reason)
        now = self._clock()
        fold = self._folds.get(key)
        if fold is not None and fold.until > now:
            if fold.first_folded_at is None:
                fold.first_folded_at = attempt.received_at
                self._holding.add(fold.serial)
                heapq.heappush(self._held, (attempt.received_at, fold.serial))
            fold.folded += 1
            fold.last = attempt
            return False
        if fold is not None:
            self._close(key)
        if len(self._folds) >= _MAX_FOLDS:
            self._close(next(iter(self._folds)))
        self._folds[key] = _Fold(until=now + self._fold_seconds, serial=next(self._serials))
        return True

    def release(self, *, everything: bool = False) -> list[Attempt]:
        """The records of the windows that have ended (with `everything`, of every window, as at
        shutdown), handed over to be recorded; cheap when there are none."""
        if self._folds:
            now = self._clock()
            while self._folds:
                key, fold = next(iter(self._folds.items()))
                if fold.until > now and not everything:
                    break  # the rest were opened later, so end later
                self._close(key)
        if not self._ended:
            return []
        ended, self._ended = self._ended, []
        for serial, _ in ended:
            self._holding.discard(serial)
        return [summary for _, summary in ended]

    def held_since(self) -> datetime | None:
        """When the earliest attempt folded but not handed over yet was received, if any."""
        while self._held and self._held[0][1] not in self._holding:
            heapq.heappop(self._held)
        return self._held[0][0] if self._held else None

    def _close(self, key: Hashable) -> None:
        fold = self._folds.pop(key)
        summary = fold.summary()
        if summary is not None:
            self._ended.append((fold.serial, summary))
