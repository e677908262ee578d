"""A report's times are the trade server's wall clock: read as UTC through a fixed offset, an IANA
zone, or "New York close" (UTC+2, UTC+3 while New York keeps summer time), with the hour a
daylight-saving change skips or repeats refused rather than guessed."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from services.shared.brokers.mt5.server_clock import server_clock
from services.shared.errors import InvalidEvent


def utc(wall: str, spec: str) -> str:
    instant = server_clock(spec).to_utc(datetime.strptime(wall, "%Y.%m.%d %H:%M:%S"))
    assert instant.tzinfo is UTC
    return f"{instant:%Y-%m-%d %H:%M:%S}"


@pytest.mark.parametrize(
    ("wall", "expected"),
    [
        ("2024.01.09 10:15:20", "2024-01-09 08:15:20"),  # winter: UTC+2
        ("2024.07.15 10:00:00", "2024-07-15 07:00:00"),  # summer: UTC+3
        # New York springs forward on 10 March at 02:00 (07:00 UTC): the server's 09:00 becomes
        # 10:00, a second apart.
        ("2024.03.10 08:59:59", "2024-03-10 06:59:59"),
        ("2024.03.10 10:00:00", "2024-03-10 07:00:00"),
        # Between New York's change and Europe's (31 March) it is already UTC+3 ...
        ("2024.03.20 12:00:00", "2024-03-20 09:00:00"),
        # ... and after New York falls back on 3 November (06:00 UTC) UTC+2 again, while
        # Europe was back a week earlier.
        ("2024.11.03 07:59:59", "2024-11-03 04:59:59"),
        ("2024.11.03 09:00:00", "2024-11-03 07:00:00"),
        ("2024.10.30 12:00:00", "2024-10-30 09:00:00"),
    ],
)
def test_new_york_close_is_utc_plus_2_or_3_switching_when_new_york_does(
    wall: str, expected: str
) -> None:
    assert utc(wall, "new-york-close") == expected


def test_new_york_close_is_not_eastern_european_time() -> None:
    # Europe changes on 31 March, three weeks after New York: the two disagree in between.
    assert utc("2024.03.20 12:00:00", "Europe/Nicosia") == "2024-03-20 10:00:00"
    assert utc("2024.03.20 12:00:00", "new-york-close") == "2024-03-20 09:00:00"


@pytest.mark.parametrize(
    ("wall", "spec"),
    [
        ("2024.03.10 09:30:00", "new-york-close"),  # skipped: 09:00 went straight to 10:00
        ("2024.11.03 08:30:00", "new-york-close"),  # repeated: 09:00 went back to 08:00
        ("2024.03.31 03:30:00", "Europe/Nicosia"),  # skipped
        ("2024.10.27 03:30:00", "Europe/Nicosia"),  # repeated
    ],
)
def test_a_time_a_daylight_saving_change_skips_or_repeats_is_refused(wall: str, spec: str) -> None:
    with pytest.raises(InvalidEvent, match="either repeats or skips") as refused:
        utc(wall, spec)
    assert refused.value.code == "ambiguous_time"


@pytest.mark.parametrize(
    ("spec", "name", "expected"),
    [
        ("UTC+2", "UTC+02:00", "2024-07-15 08:00:00"),
        ("+03:00", "UTC+03:00", "2024-07-15 07:00:00"),
        ("GMT-3:30", "UTC-03:30", "2024-07-15 13:30:00"),
        ("utc", "UTC", "2024-07-15 10:00:00"),
        ("New-York-Close", "new-york-close", "2024-07-15 07:00:00"),
        ("Asia/Tokyo", "Asia/Tokyo", "2024-07-15 01:00:00"),
    ],
)
def test_a_clock_is_named_by_offset_zone_or_convention(spec: str, name: str, expected: str) -> None:
    assert server_clock(spec).spec == name
    assert utc("2024.07.15 10:00:00", spec) == expected


@pytest.mark.parametrize(
    "spec", ["", "UTC+15", "+2:75", "Mars/Olympus", "../../etc/passwd", "EET", "2", "local"]
)
def test_a_clock_it_does_not_know_is_refused_with_the_forms_it_knows(spec: str) -> None:
    with pytest.raises(ValueError, match=r"new-york-close|not a UTC offset"):
        server_clock(spec)
