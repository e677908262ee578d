"""The MT5 history report fixtures, and copies of them naming another account (a spec's own
connection), in either export format."""

from __future__ import annotations

import calendar
import io
import zipfile
from collections.abc import Iterator
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from services.shared.brokers.mt5.report_deals import report_deals
from services.shared.brokers.mt5.report_file import read_report
from tests.support.builders import FIXTURES

REPORTS = FIXTURES / "mt5" / "reports"
HEDGING_HTML = REPORTS / "ReportHistory-61234567-hedging-constructed.html"
HEDGING_XLSX = REPORTS / "ReportHistory-61234567-hedging-constructed.xlsx"
NETTING_HTML = REPORTS / "ReportHistory-61234568-netting-constructed.html"
# The account line of the hedging fixtures.
HEDGING_LOGIN, HEDGING_SERVER = 61234567, "PosCal-Demo"


def report_of(path: Path, login: int, server: str) -> bytes:
    """The hedging fixture `path` as the report of account `login` on `server`."""
    old = f"{HEDGING_LOGIN} (USD, {HEDGING_SERVER},"
    new = f"{login} (USD, {server},"
    data = path.read_bytes()
    if not data.startswith(b"PK"):
        text = data.decode("utf-16")
        html_old, html_new = old.replace(" ", "&nbsp;"), new.replace(" ", "&nbsp;")
        assert html_old in text
        return text.replace(html_old, html_new).encode("utf-16")
    source, copy = zipfile.ZipFile(io.BytesIO(data)), io.BytesIO()
    replaced = False
    with source, zipfile.ZipFile(copy, "w", zipfile.ZIP_DEFLATED) as target:
        for member in source.infolist():
            content = source.read(member)
            replaced = replaced or old.encode() in content
            target.writestr(member, content.replace(old.encode(), new.encode()))
    assert replaced
    return copy.getvalue()


# Each hedging fixture deal's position as the terminal knows it (and its Expert Advisor sends):
# the report alone cannot tell 5012, 5013 (two alike grid positions closed at one second) or
# 5015 (a part of a position still open).
EA_POSITIONS = {
    "5002": 7001,
    "5003": 7001,
    "5004": 7001,
    "5005": 6990,
    "5006": 7005,
    "5007": 7006,
    "5008": 7005,
    "5009": 7006,
    "5010": 7008,
    "5011": 7009,
    "5012": 7008,
    "5013": 7009,
    "5014": 7012,
    "5015": 7012,
}
_TYPES = {"buy": 0, "sell": 1, "balance": 2, "credit": 3, "commission": 7}
_ENTRIES = {"in": 0, "out": 1, "out by": 3, "": 0}


def ea_deals(report: Path, month: str = "") -> Iterator[dict[str, Any]]:
    """The hedging report's deals of `month` (`2024.01`; all by default) as the Expert Advisor
    sends them: MT5's TradeDeal fields, times the server's wall clock in epoch seconds."""
    for deal in report_deals(read_report(report.read_bytes())).deals:
        cells = deal.cells
        if not cells["time"].startswith(month):
            continue
        wall = calendar.timegm(datetime.strptime(cells["time"], "%Y.%m.%d %H:%M:%S").timetuple())
        yield {
            "ticket": int(cells["deal"]),
            "order": int(cells["order"] or 0),
            "time": wall,
            "time_msc": wall * 1000,
            "type": _TYPES[cells["type"]],
            "entry": _ENTRIES[cells["direction"]],
            "magic": 0,
            "position_id": EA_POSITIONS.get(cells["deal"], 0),
            "reason": 0,
            "volume": Decimal(cells["volume"] or "0"),
            "price": Decimal(cells["price"].replace(" ", "") or "0"),
            "commission": Decimal(cells["commission"]),
            "swap": Decimal(cells["swap"]),
            "profit": Decimal(cells["profit"].replace(" ", "")),
            "fee": Decimal(cells["fee"]),
            "symbol": cells["symbol"],
            "comment": cells["comment"],
            "external_id": "",
        }
