"""The per-client refusal budget (POSCAL_REFUSALS_PER_CLIENT, in this replica's memory): every
refusal a client causes spends it, whatever its status, except our own 503s. A client over its
budget is answered 429 before any lookup, and its throttled attempts are folded: the first of
each window is recorded as it comes, the rest become one row that stands for all of them
(`attempts`), so no client can grow the attempt log, or the log output, without bound.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass

from services.ingest.audit import Attempt
from services.ingest.rate_limits import TokenBuckets

FOLD_SECONDS = 60.0
_MAX_FOLDS = 100_000


@dataclass
class _Fold:
    until: float
    folded: int = 0
    last: Attempt | None = None

    def summary(self) -> Attempt | None:
        """One record for every attempt folded into this window, or None if there were none."""
        if self.last is None:
            return None
        return dataclasses.replace(self.last, attempts=self.folded)


class ClientRefusals:
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
        # Open windows by client, oldest first (a window reopened moves to the end).
        self._folds: dict[str, _Fold] = {}
        self._summaries: list[Attempt] = []

    def wait(self, client: str) -> int | None:
        """Seconds until this client may be refused again, or None if it is within budget."""
        return self._budget.wait(client)

    def spend(self, client: str) -> None:
        self._budget.spend(client)

    def throttled(self, client: str, attempt: Attempt) -> bool:
        """A throttled attempt of `client` (already answered 429): True if it is to be recorded
        (the first of its window), False if it was folded into the window's summary."""
        now = self._clock()
        fold = self._folds.get(client)
        if fold is not None and fold.until > now:
            fold.folded += 1
            fold.last = attempt
            return False
        if fold is not None:
            self._close(client)
        if len(self._folds) >= _MAX_FOLDS:
            self._close(next(iter(self._folds)))
        self._folds[client] = _Fold(until=now + self._fold_seconds)
        return True

    def summaries(self) -> list[Attempt]:
        """Records of the windows that have ended since the last call (cheap when none did)."""
        if self._folds:
            now = self._clock()
            while self._folds:
                client, fold = next(iter(self._folds.items()))
                if fold.until > now:
                    break  # the rest were opened later, so end later
                self._close(client)
        if not self._summaries:
            return []
        due, self._summaries = self._summaries, []
        return due

    def drain(self) -> list[Attempt]:
        """Every window's record, ended or not (at shutdown)."""
        for client in list(self._folds):
            self._close(client)
        due, self._summaries = self._summaries, []
        return due

    def _close(self, client: str) -> None:
        summary = self._folds.pop(client).summary()
        if summary is not None:
            self._summaries.append(summary)
