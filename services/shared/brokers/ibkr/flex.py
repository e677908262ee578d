"""Reading what the Flex Web Service writes, the one way its mapper and its adapter both do:
XML without DTDs or entities (defusedxml), and US/Eastern wall-clock times."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import defusedxml.ElementTree as SafeET
from defusedxml import DefusedXmlException

from services.shared.errors import InvalidEvent

_EASTERN = ZoneInfo("America/New_York")
_DATE = r"(?P<date>\d{8}|\d{4}-\d{2}-\d{2})"
_TIME = r"(?P<time>\d{6}|\d{2}:\d{2}:\d{2})"
_DATE_TIME = re.compile(rf"^{_DATE}[;, ]?{_TIME}$")


class FlexXmlError(ValueError):
    """Not an XML document Flex would send."""


def read_flex_xml(body: bytes) -> ET.Element:
    """The document's root element. A DTD is refused outright, as are entities: Flex never sends
    either, and refusing them closes the door on entity expansion (billion laughs, external
    entities)."""
    try:
        root: ET.Element = SafeET.fromstring(body, forbid_dtd=True)
    except DefusedXmlException:
        raise FlexXmlError("DTDs and entity declarations are refused") from None
    except ET.ParseError as exc:
        raise FlexXmlError(str(exc)) from None
    return root


def parse_flex_time(text: str) -> datetime:
    """A Flex date-time as written (yyyyMMdd or yyyy-MM-dd, then HHmmss or HH:mm:ss, joined by
    ';', ',', a space or nothing): the naive US/Eastern wall-clock time; InvalidEvent for any
    other format. The mapper and the adapter both read trade times with this, so a format one of
    them refuses, both refuse."""
    match = _DATE_TIME.match(text)
    if match is None:
        raise InvalidEvent(
            "invalid_trade",
            f"time {text!r}: expected yyyyMMdd or yyyy-MM-dd, then HHmmss or HH:mm:ss",
        )
    date = match["date"].replace("-", "")
    time = match["time"].replace(":", "")
    try:
        return datetime(
            int(date[:4]),
            int(date[4:6]),
            int(date[6:]),
            int(time[:2]),
            int(time[2:4]),
            int(time[4:]),
        )
    except ValueError as exc:
        raise InvalidEvent("invalid_trade", f"time {text!r}: {exc}") from None


def eastern_to_utc(text: str) -> datetime:
    """A Flex date-time (see `parse_flex_time`) in US/Eastern, as UTC."""
    return parse_flex_time(text).replace(tzinfo=_EASTERN).astimezone(UTC)
