"""A trade server's wall clock as UTC: a fixed offset, an IANA zone, or the "New York close"
convention most MT5 servers keep."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from services.shared.errors import InvalidEvent

# Most MT5 servers keep New York's close at midnight: UTC+2 while New York is on standard time,
# UTC+3 while it is on daylight time, switching when New York does (not when Europe does).
NEW_YORK_CLOSE = "new-york-close"
_NEW_YORK = "America/New_York"
_NEW_YORK_CLOSE_SHIFT = timedelta(hours=7)  # the server's wall clock runs 7 h ahead of New York's
_OFFSET = re.compile(r"^(?:UTC|GMT)?\s*([+-])(\d{1,2})(?::?(\d{2}))?$", re.IGNORECASE)
_FORMS = (
    f"'{NEW_YORK_CLOSE}', a fixed offset such as 'UTC+2' or 'UTC-03:30', or a zone such as "
    "'Europe/Nicosia'"
)


@dataclass(frozen=True)
class ServerClock:
    """How one server's wall clock reads in UTC; `spec` is how it was named (kept in payloads)."""

    spec: str
    _zone: tzinfo
    _shift: timedelta = timedelta(0)

    def to_utc(self, wall: datetime) -> datetime:
        """The instant a naive server wall-clock time names; InvalidEvent (`ambiguous_time`)
        for a time the zone's daylight-saving change makes ambiguous or skips."""
        local = wall - self._shift
        if isinstance(self._zone, timezone):
            return local.replace(tzinfo=self._zone).astimezone(UTC)
        early = local.replace(tzinfo=self._zone, fold=0)
        late = local.replace(tzinfo=self._zone, fold=1)
        if early.utcoffset() != late.utcoffset():
            raise InvalidEvent(
                "ambiguous_time",
                f"{wall:%Y.%m.%d %H:%M:%S} is in the hour the clock ({self.spec}) either repeats "
                "or skips at its daylight-saving change: which instant it names cannot be told",
            )
        return early.astimezone(UTC)


def server_clock(spec: str) -> ServerClock:
    """The clock `spec` names; ValueError listing the forms for one it does not."""
    text = spec.strip()
    if text.lower() == NEW_YORK_CLOSE:
        return ServerClock(NEW_YORK_CLOSE, ZoneInfo(_NEW_YORK), _NEW_YORK_CLOSE_SHIFT)
    if text.upper() in ("UTC", "GMT", "Z"):
        return ServerClock("UTC", UTC)
    match = _OFFSET.match(text)
    if match:
        sign, hours, minutes = match.group(1), int(match.group(2)), int(match.group(3) or 0)
        if hours > 14 or minutes >= 60:
            raise ValueError(f"{spec!r} is not a UTC offset (at most 14 hours)")
        offset = timedelta(hours=hours, minutes=minutes) * (-1 if sign == "-" else 1)
        name = f"UTC{sign}{hours:02d}:{minutes:02d}"
        return ServerClock(name, timezone(offset, name))
    if "/" in text and ".." not in text and not text.startswith("/"):
        try:
            return ServerClock(text, ZoneInfo(text))
        except (ZoneInfoNotFoundError, ValueError):
            pass
    raise ValueError(f"{spec!r} is not a server clock: give {_FORMS}")
