"""The MT5 terminal's history report is read as it exports it: HTML (UTF-16, hidden cells, spaced
thousands) and XLSX (numbers as numbers) into the same header, tables and deal rows; a file that
is no report, or holds no Deals table, is refused with what is wrong."""

from __future__ import annotations

import io
import os
import zipfile
from decimal import Decimal
from pathlib import Path

import pytest

from services.shared.brokers.mt5 import report_file
from services.shared.brokers.mt5.report_deals import report_deals, report_number
from services.shared.brokers.mt5.report_file import UnreadableReport, read_report
from tests.support.mt5_reports import HEDGING_HTML, HEDGING_XLSX

DEAL_COLUMNS = (
    "Time",
    "Deal",
    "Symbol",
    "Type",
    "Direction",
    "Volume",
    "Price",
    "Order",
    "Commission",
    "Fee",
    "Swap",
    "Profit",
    "Balance",
    "Comment",
)


def html_text(path: Path = HEDGING_HTML) -> str:
    return path.read_bytes().decode("utf-16")


def test_the_html_export_is_read_from_utf16_with_its_header_and_titled_tables() -> None:
    data = HEDGING_HTML.read_bytes()
    assert data.startswith(b"\xff\xfe")  # as the terminal writes it
    report = read_report(data)
    assert report.format == "html"
    assert report.title == "Trade History Report"
    assert dict(report.header) == {
        "Name": "PosCal Test Trader",
        "Account": "61234567 (USD, PosCal-Demo, demo, Hedge)",
        "Company": "PosCal Test Brokerage Ltd",
        "Date": "2024.08.02 10:41",
    }
    assert list(report.tables) == [
        "Positions",
        "Orders",
        "Deals",
        "Open Positions",
        "Working Orders",
    ]
    # The Cost column is in the file but hidden, as the terminal shows the table.
    assert report.tables["Deals"].columns == DEAL_COLUMNS
    assert report.summary["Balance"] == "10 225.14"


def test_the_positions_tables_repeated_columns_are_told_apart() -> None:
    positions = read_report(HEDGING_HTML.read_bytes()).tables["Positions"]
    assert positions.columns[:10] == (
        "Time",
        "Position",
        "Symbol",
        "Type",
        "Volume",
        "Price",
        "S / L",
        "T / P",
        "Time 2",
        "Price 2",
    )


def test_each_deal_row_is_kept_with_its_row_in_the_file_and_its_cells_as_written() -> None:
    deals = read_report(HEDGING_HTML.read_bytes()).tables["Deals"].rows
    by_ticket = {row.get("Deal"): row for row in deals}
    gold = by_ticket["5006"]
    assert gold.number == 40
    assert dict(gold.cells) == {
        "Time": "2024.07.15 10:00:00",
        "Deal": "5006",
        "Symbol": "XAUUSD",
        "Type": "buy",
        "Direction": "in",
        "Volume": "0.1",
        "Price": "2 031.55",
        "Order": "7005",
        "Commission": "-0.50",
        "Fee": "0.00",
        "Swap": "0.00",
        "Profit": "0.00",
        "Balance": "10 108.24",
    }
    assert by_ticket["5001"].get("Comment") == "Deposit"


def test_the_xlsx_export_holds_the_same_deals_as_the_html_one() -> None:
    html = report_deals(read_report(HEDGING_HTML.read_bytes()))
    xlsx_report = read_report(HEDGING_XLSX.read_bytes())
    xlsx = report_deals(xlsx_report)
    assert xlsx_report.format == "xlsx"
    assert xlsx_report.header == read_report(HEDGING_HTML.read_bytes()).header
    assert xlsx.account == html.account

    def comparable(cells: dict[str, str]) -> dict[str, object]:
        numeric = ("volume", "price", "commission", "fee", "swap", "profit", "balance")
        return {k: report_number(v) if k in numeric and v else v for k, v in cells.items()}

    assert [comparable(dict(d.cells)) for d in xlsx.deals] == [
        comparable(dict(d.cells)) for d in html.deals
    ]
    assert [d.position for d in xlsx.deals] == [d.position for d in html.deals]


def test_xlsx_numbers_read_back_as_the_terminal_wrote_them() -> None:
    deals = {
        d.cells["deal"]: d.cells for d in report_deals(read_report(HEDGING_XLSX.read_bytes())).deals
    }
    assert deals["5006"]["price"] == "2031.55"  # a double, shortest form: not 2031.5499999
    assert deals["5001"]["profit"] == "10000"
    assert report_number(deals["5005"]["price"]) == Decimal("1.2711")


def test_a_report_saved_again_as_utf8_or_without_its_byte_order_mark_still_reads() -> None:
    text = html_text()
    expected = read_report(HEDGING_HTML.read_bytes()).tables["Deals"]
    for data in (text.encode("utf-8"), text.encode("utf-8-sig"), text.encode("utf-16-le")):
        assert read_report(data).tables["Deals"] == expected


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "holds no table"),
        (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj", "not valid utf-8 text"),
        (b"Time,Deal,Symbol\n2024.01.09 10:15:20,5002,EURUSD\n", "holds no table"),
        (b"\xff\xfe" + "<table><tr><td>x</td></tr>".encode("utf-16-le")[:-1], "not valid utf-16"),
        (b"PK\x03\x04 not really a zip", "not a valid XLSX workbook"),
    ],
)
def test_a_file_that_is_no_report_is_refused_with_what_is_wrong(data: bytes, reason: str) -> None:
    with pytest.raises(UnreadableReport, match=reason):
        read_report(data)


def test_a_report_without_its_deals_table_is_refused_and_told_how_to_export_one() -> None:
    text = html_text()
    start = text.index("<b>Deals</b>")
    end = text.index("<b>Open Positions</b>")
    without_deals = text[:start] + text[end:]
    with pytest.raises(UnreadableReport, match="no Deals table was found: export the report"):
        read_report(without_deals.encode("utf-16"))


def test_a_zip_that_is_no_workbook_is_refused() -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("hello.txt", "not a workbook")
    with pytest.raises(UnreadableReport, match="not a valid XLSX workbook"):
        read_report(buffer.getvalue())


def test_a_workbook_that_would_unpack_past_the_limit_is_refused_unread(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(report_file, "MAX_UNPACKED_BYTES", 64 * 1024)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("xl/worksheets/sheet1.xml", b"<" * (64 * 1024 + 1))
    with pytest.raises(UnreadableReport, match="would unpack to"):
        read_report(buffer.getvalue())


# Real exports are not kept in this repository (see tests/fixtures/mt5/reports/SOURCES.md); they
# are read wherever a folder of them is given.
_REAL = os.environ.get("POSCAL_MT5_REAL_REPORTS")
REAL_REPORTS = (
    Path(_REAL) if _REAL else Path(__file__).resolve().parents[3] / "shared/fixtures/mt5/reports"
)
REAL_FILES = (
    sorted(p for p in REAL_REPORTS.iterdir() if p.suffix in (".htm", ".html", ".xlsx"))
    if REAL_REPORTS.is_dir()
    else []
)


@pytest.mark.skipif(not REAL_FILES, reason="no folder of real exported reports was given")
@pytest.mark.parametrize("path", REAL_FILES, ids=lambda p: p.name)
def test_a_real_export_is_read_whole_with_every_trade_deals_position_or_its_reason(
    path: Path,
) -> None:
    report = read_report(path.read_bytes())
    deals = report_deals(report)
    assert deals.account.login > 0
    assert report.tables["Deals"].columns[:8] == DEAL_COLUMNS[:8]
    assert deals.deals, "a real report with no deal rows tells nothing"
    for deal in deals.deals:
        assert deal.cells["deal"].isdigit(), deal
        if deal.cells["type"] in ("buy", "sell"):
            assert deal.position is not None or deal.position_unknown, deal
