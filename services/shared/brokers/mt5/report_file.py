"""The history report the MT5 terminal exports (HTML or XLSX), read into its header, its tables and
its summary as cell texts; what a cell means is report_deals.py's to say."""

from __future__ import annotations

import io
import re
import warnings
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import date, datetime, time
from typing import Literal

from bs4 import BeautifulSoup, Tag

# The terminal's English section titles; reports saved in another language are not read (their
# labels and column names are translated too).
SECTIONS = ("Positions", "Orders", "Deals", "Open Positions", "Working Orders", "Results")
# An XLSX export is a zip of XML: refuse one that would unpack to more than this (a zip bomb).
MAX_UNPACKED_BYTES = 256 * 1024 * 1024
_ZIP_MAGIC = b"PK\x03\x04"
_SPACES = re.compile(r"\s+")


class UnreadableReport(ValueError):
    """The bytes are not a history report this reader knows; the message says what is wrong."""


@dataclass(frozen=True)
class ReportRow:
    """One row of a table: its place in the file (the sheet's row, or the HTML table's row,
    counted from 1) and its cells by column name."""

    number: int
    cells: Mapping[str, str]

    def get(self, column: str) -> str:
        return self.cells.get(column, "")


@dataclass(frozen=True)
class ReportTable:
    """A titled table. A column name that repeats gets its occurrence after it: the Positions
    table's close time and price are `Time 2` and `Price 2`."""

    title: str
    columns: tuple[str, ...]
    rows: tuple[ReportRow, ...]


@dataclass(frozen=True)
class ReportFile:
    format: Literal["html", "xlsx"]
    title: str
    header: Mapping[str, str]  # Name, Account, Company, Date: labels without their colon
    tables: Mapping[str, ReportTable]  # by SECTIONS title
    summary: Mapping[str, str]  # Balance, Equity, Credit Facility...: the first of each label


# A grid: the file's rows in order, each its cells by column offset (a cell spanning columns
# sits at its first one), with the row's number.
_Grid = list[tuple[int, dict[int, str]]]


def read_report(data: bytes) -> ReportFile:
    """The report in `data`, an HTML or XLSX export; UnreadableReport if it is neither."""
    if data.startswith(_ZIP_MAGIC):
        return _from_grid("xlsx", _xlsx_grid(data))
    return _from_grid("html", _html_grid(_decode_html(data)))


# --- HTML ------------------------------------------------------------------------------------


def _decode_html(data: bytes) -> str:
    """The terminal writes UTF-16 (little-endian, with a byte order mark); a report saved again
    by a browser or an editor may be UTF-8."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        encoding = "utf-16"
    elif data.startswith(b"\xef\xbb\xbf"):
        encoding = "utf-8-sig"
    elif data[:200].count(b"\x00") > 50:  # UTF-16 without its mark
        encoding = "utf-16-le" if data[1:2] == b"\x00" else "utf-16-be"
    else:
        encoding = "utf-8"
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as exc:
        raise UnreadableReport(f"the file is not valid {encoding} text: {exc.reason}") from None


def _html_grid(text: str) -> _Grid:
    soup = BeautifulSoup(text, "html.parser")
    grid: _Grid = []
    for number, row in enumerate(soup.find_all("tr"), start=1):
        assert isinstance(row, Tag)
        cells: dict[int, str] = {}
        offset = 0
        for cell in row.find_all(["td", "th"], recursive=False):
            assert isinstance(cell, Tag)
            # The template keeps cells it does not show (a position's comment, the cost column)
            # with the class "hidden"; they are not part of the table as the terminal shows it.
            if "hidden" in (cell.get_attribute_list("class") or []):
                continue
            text_of_cell = _clean(cell.get_text(" "))
            if text_of_cell:
                cells[offset] = text_of_cell
            offset += _span(cell.get("colspan"))
        grid.append((number, cells))
    return grid


def _span(value: object) -> int:
    try:
        return max(1, min(int(str(value)), 1000))
    except ValueError:
        return 1


# --- XLSX ------------------------------------------------------------------------------------


def _xlsx_grid(data: bytes) -> _Grid:
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            unpacked = sum(info.file_size for info in archive.infolist())
    except zipfile.BadZipFile as exc:
        raise UnreadableReport(f"the file is not a valid XLSX workbook: {exc}") from None
    if unpacked > MAX_UNPACKED_BYTES:
        raise UnreadableReport(
            f"the workbook would unpack to {unpacked} bytes (at most {MAX_UNPACKED_BYTES})"
        )
    from openpyxl import load_workbook

    try:
        with warnings.catch_warnings():
            # The terminal's workbooks have no default style, which openpyxl remarks on.
            warnings.simplefilter("ignore", UserWarning)
            workbook = load_workbook(io.BytesIO(data), read_only=True, data_only=True)
    except Exception as exc:  # openpyxl raises whatever its XML and zip readers raise
        raise UnreadableReport(f"the file is not a valid XLSX workbook: {exc}") from None
    try:
        sheet = workbook.worksheets[0]
        return [
            (number, {i: t for i, value in enumerate(values) if (t := _xlsx_text(value))})
            for number, values in enumerate(sheet.iter_rows(values_only=True), start=1)
        ]
    finally:
        workbook.close()


def _xlsx_text(value: object) -> str:
    """A cell as the terminal wrote it: numbers are doubles in a workbook, and the shortest text
    that reads back as the same double is the one the terminal wrote."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if value.is_integer() and abs(value) < 2**53:
            return str(int(value))
        return repr(value)
    if isinstance(value, datetime):
        return value.strftime("%Y.%m.%d %H:%M:%S")
    if isinstance(value, date | time):
        return value.isoformat()
    text = _clean(str(value))
    return "" if text.startswith("=") else text  # a formula without its cached value: totals


def _clean(text: str) -> str:
    return _SPACES.sub(" ", text.replace("\xa0", " ")).strip()


# --- the report's structure ------------------------------------------------------------------


def _from_grid(kind: Literal["html", "xlsx"], grid: _Grid) -> ReportFile:
    rows = [(number, cells) for number, cells in grid if cells]
    if not rows:
        raise UnreadableReport("the file holds no table")
    title = rows[0][1][min(rows[0][1])]
    header: dict[str, str] = {}
    summary: dict[str, str] = {}
    tables: dict[str, ReportTable] = {}
    section: str | None = None
    seen_section = False
    columns: dict[int, str] | None = None
    body: list[ReportRow] = []

    def close() -> None:
        if section is not None and columns is not None and section not in tables:
            tables[section] = ReportTable(section, tuple(columns.values()), tuple(body))

    for number, cells in rows[1:]:
        texts = [cells[i] for i in sorted(cells)]
        if len(texts) == 1 and texts[0] in SECTIONS:
            close()
            section, columns, body = texts[0], None, []
            seen_section = True
            continue
        if texts[0].endswith(":"):
            pairs = dict(_label_pairs(cells))
            target = summary if seen_section else header
            for label, value in pairs.items():
                target.setdefault(label, value)
            if section is not None and columns is not None:
                close()
                section = None if section != "Results" else section
            continue
        if section is None or section == "Results":
            continue
        if columns is None:
            columns = _column_names(cells)
            continue
        body.append(
            ReportRow(number, {columns[i]: text for i, text in cells.items() if i in columns})
        )
    close()
    if "Deals" not in tables:
        raise UnreadableReport(
            "no Deals table was found: export the report from the terminal's History tab "
            "(Report > HTML or Open XML) with the terminal's language set to English"
        )
    return ReportFile(kind, title, header, tables, summary)


def _label_pairs(cells: Mapping[int, str]) -> Iterator[tuple[str, str]]:
    """`Label:` cells with the value in the next cell that has one."""
    offsets = sorted(cells)
    for position, offset in enumerate(offsets):
        text = cells[offset]
        if not text.endswith(":") or position + 1 >= len(offsets):
            continue
        value = cells[offsets[position + 1]]
        if not value.endswith(":"):
            yield text[:-1].strip(), value


def _column_names(cells: Mapping[int, str]) -> dict[int, str]:
    names: dict[int, str] = {}
    seen: dict[str, int] = {}
    for offset in sorted(cells):
        name = cells[offset]
        seen[name] = seen.get(name, 0) + 1
        names[offset] = name if seen[name] == 1 else f"{name} {seen[name]}"
    return names
