"""The MetaApi sync's cursor (pure): the newest deal time handed over, and the deals handed over
within the overlap before it, so a window read again hands over only what is new in it."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

# Where a first sync starts: before any MT5 account's history (MT5 dates from 2010).
HISTORY_START = datetime(2000, 1, 1, tzinfo=UTC)
# Deals remembered by id at most; beyond it the oldest are forgotten, and at worst handed over
# once more (their keys make that harmless).
MAX_SEEN = 2000


def iso_millis(moment: datetime) -> str:
    """A UTC time as MetaApi writes one: `2024-06-03T06:00:00.123Z`."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


@dataclass(frozen=True)
class HandedDeal:
    """A deal as the cursor remembers it: its id and time."""

    id: str
    time: datetime


def deal_identity(deal: Any) -> HandedDeal | None:
    """A MetaApi deal's id and UTC time, or None if it has no readable ones (the mapper says
    what is wrong with it; the cursor cannot place it)."""
    if not isinstance(deal, dict):
        return None
    deal_id, text = deal.get("id"), deal.get("time")
    if not isinstance(deal_id, str) or not deal_id or not isinstance(text, str):
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    if moment.tzinfo is None:
        return None
    return HandedDeal(deal_id, moment.astimezone(UTC))


@dataclass(frozen=True)
class SyncCursor:
    """`through`: the newest deal time handed over (None: nothing yet); `seen`: the deals handed
    over from `through - overlap` on, which a window read again from there skips."""

    through: datetime | None = None
    seen: tuple[HandedDeal, ...] = ()

    def window_start(self, overlap: timedelta) -> datetime:
        """Where the next read starts (inclusive, as MetaApi's startTime is)."""
        return HISTORY_START if self.through is None else self.through - overlap

    def seen_ids(self) -> frozenset[str]:
        return frozenset(deal.id for deal in self.seen)

    def after(self, handed: Iterable[HandedDeal], overlap: timedelta) -> SyncCursor:
        """The cursor once these deals are handed over too."""
        known = {deal.id: deal for deal in self.seen}
        for deal in handed:
            known[deal.id] = deal
        times = [d.time for d in known.values()] + ([self.through] if self.through else [])
        if not times:
            return self
        through = max(times)
        start = through - overlap
        kept = sorted((d for d in known.values() if d.time >= start), key=lambda d: (d.time, d.id))
        return SyncCursor(through, tuple(kept[-MAX_SEEN:]))

    def text(self) -> str:
        return orjson.dumps(
            {
                "v": 1,
                "through": iso_millis(self.through) if self.through else None,
                "seen": [[d.id, iso_millis(d.time)] for d in self.seen],
            }
        ).decode()


def read_cursor(text: str | None) -> SyncCursor:
    """The cursor a previous sync saved (None: never synced); ValueError if it is no such."""
    if text is None:
        return SyncCursor()
    try:
        document = orjson.loads(text)
        through = document["through"]
        seen = tuple(
            HandedDeal(str(deal_id), datetime.fromisoformat(moment).astimezone(UTC))
            for deal_id, moment in document["seen"]
        )
        return SyncCursor(
            None if through is None else datetime.fromisoformat(through).astimezone(UTC), seen
        )
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        raise ValueError(f"a MetaApi cursor is its JSON state, not {text[:80]!r}") from None
