"""A report's account line and each deal's position, worked out from the report's own tables the
way MT5 numbers positions: what the report cannot tell is said, never guessed."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.shared.brokers.mt5.report_deals import report_account, report_deals
from services.shared.brokers.mt5.report_file import ReportFile, UnreadableReport, read_report
from tests.support.mt5_reports import HEDGING_HTML as HEDGING
from tests.support.mt5_reports import NETTING_HTML as NETTING


def report(path: Path, *replacements: tuple[str, str]) -> ReportFile:
    """The fixture with texts replaced (the account line's spaces are `&nbsp;` in the file)."""
    text = path.read_bytes().decode("utf-16")
    for old, new in replacements:
        if old not in text:
            old, new = old.replace(" ", "&nbsp;"), new.replace(" ", "&nbsp;")
        assert old in text, old
        text = text.replace(old, new)
    return read_report(text.encode("utf-16"))


def positions(path: Path, *replacements: tuple[str, str], **options: str) -> dict[str, object]:
    """Each deal's position (or why it has none) by ticket."""
    deals = report_deals(report(path, *replacements), **options)  # type: ignore[arg-type]
    return {d.cells["deal"]: d.position or d.position_unknown for d in deals.deals}


def test_the_account_line_names_login_currency_server_account_type_and_margin_mode() -> None:
    account = report_account(report(HEDGING))
    assert (account.login, account.currency, account.server) == (61234567, "USD", "PosCal-Demo")
    assert (account.trade_mode, account.margin_mode) == ("demo", "hedging")
    assert account.company == "PosCal Test Brokerage Ltd"


def test_the_older_account_line_with_leverage_and_no_margin_mode_is_read_too() -> None:
    older = report(
        HEDGING,
        ("61234567 (USD, PosCal-Demo, demo, Hedge)", "61234567 (USD, 1:500, PosCal-Demo, real)"),
    )
    account = report_account(older)
    assert (account.login, account.server, account.trade_mode) == (61234567, "PosCal-Demo", "real")
    assert account.margin_mode is None


def test_a_report_whose_header_names_no_login_is_refused() -> None:
    nameless = report(HEDGING, ("61234567 (USD, PosCal-Demo, demo, Hedge)", "(USD, PosCal-Demo)"))
    with pytest.raises(UnreadableReport, match="names no account login"):
        report_deals(nameless)


def test_on_a_hedging_account_each_deal_belongs_to_the_position_its_opening_order_opened() -> None:
    found = positions(HEDGING)
    # Opening deals: the position is the ticket of the order that opened it.
    assert [found[t] for t in ("5002", "5006", "5007", "5010", "5011", "5014")] == [
        7001,
        7005,
        7006,
        7008,
        7009,
        7012,
    ]
    # Two partial closes whose volumes, profits and average price add up to Positions row 7001.
    assert (found["5003"], found["5004"]) == (7001, 7001)
    # A position opened before the report's period, closed inside it.
    assert found["5005"] == 6990
    # A close-by pair: each closes its own side, matched on the Positions rows' closes.
    assert (found["5008"], found["5009"]) == (7005, 7006)
    # Balance operations have no position.
    assert [found[t] for t in ("5001", "5016", "5017")] == [None, None, None]


def test_closes_the_report_cannot_tell_apart_are_left_without_a_position_and_say_why() -> None:
    found = positions(HEDGING)
    for ticket in ("5012", "5013"):
        assert found[ticket] == (
            "positions 7008, 7009 were closed alike at 2024.07.17 12:00:00 (same symbol, volume,"
            " price and profit): which of them this deal closed cannot be told from the report"
        )
    assert "still open" in str(found["5015"])


def test_a_close_with_no_position_open_for_its_symbol_says_so() -> None:
    found = positions(
        HEDGING, ("<td nowrap>5005</td><td nowrap>GBPUSD", "<td nowrap>5005</td><td nowrap>AUDUSD")
    )
    assert found["5005"] == (
        "no position of AUDUSD in the report's Positions or Open Positions tables was open when"
        " it was made"
    )


def test_on_a_netting_account_every_deal_is_the_position_open_for_its_symbol_at_its_time() -> None:
    found = positions(NETTING)
    # Scale-in, partial close, reversal and the close after it: one position, its first order.
    assert [found[t] for t in ("8001", "8002", "8003", "8004", "8005")] == [9001] * 5
    # A position opened before the period and added to within it.
    assert (found["8007"], found["8008"]) == (9000, 9000)
    # Opened after the last one closed, still open.
    assert found["8006"] == 9006


def test_without_a_margin_mode_in_the_header_the_deals_both_readings_agree_on_are_kept() -> None:
    unsaid = (
        "61234568 (EUR, PosCal-Netting, demo, Netting)",
        "61234568 (EUR, 1:100, PosCal-Netting, demo)",
    )
    found = positions(NETTING, unsaid)
    # The first opening deal is its own order's position either way.
    assert found["8001"] == 9001
    # A scale-in is its own position on a hedging account, the open one on a netting account.
    assert "pass --margin-mode" in str(found["8002"])
    assert positions(NETTING, unsaid, margin_mode="netting") == positions(NETTING)
