"""The MT5 history report fixtures, and copies of them naming another account (a spec's own
connection), in either export format."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

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
