"""`poscal-sync normalize` maps a payload file to JSON lines, touching no Kafka and no database."""

from __future__ import annotations

import io
import json
import shutil
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from services.cli.normalize import run_normalize
from tests.support.builders import FIXTURES, fixture_deals, mt5_body

NOW = datetime(2025, 2, 1, 12, 0, tzinfo=UTC)
OANDA_PAGE = FIXTURES / "constructed" / "oanda_open_reduce_close_page.json"
IBKR_STATEMENT = FIXTURES / "ibkr" / "ibkr_flex_trades_section.xml"


def normalize(
    broker: str, path: Path, account_number: str | None = None
) -> tuple[int, list[dict[str, Any]], str]:
    out, err = io.StringIO(), io.StringIO()
    code = run_normalize(broker, path, out, account_number, err=err, now=NOW)
    return code, [json.loads(line) for line in out.getvalue().splitlines()], err.getvalue()


def kinds(lines: list[dict[str, Any]]) -> list[str]:
    return [line["kind"] for line in lines]


def test_an_oanda_page_prints_fills_cash_account_then_skips_in_that_order() -> None:
    code, lines, _ = normalize("oanda", OANDA_PAGE)
    assert code == 0
    assert kinds(lines) == ["fill"] * 3 + ["cash_movement", "account"] + ["skipped"] * 3


def test_each_line_is_the_canonical_record_with_exact_decimal_text() -> None:
    _, lines, _ = normalize("oanda", OANDA_PAGE)
    opening = lines[0]["fill"]
    assert opening["fill_key"] == "oanda:101-004-1435156-001:txn:3001:open:3001"
    assert (opening["volume"], opening["price"]) == ("10", "1.10000")
    assert opening["broker_time"] == "2024-03-04T10:00:00.123456789Z"
    account = lines[4]["account"]
    assert (account["balance"], account["currency"]) == ("1000.0334", "USD")
    assert lines[5]["skipped"] == {
        "index": 0,
        "type": "MARKET_ORDER",
        "id": "3000",
        "reason": "not a fill or a cash movement",
    }


def test_the_account_number_is_taken_from_the_payload_and_said_so() -> None:
    _, _, err = normalize("oanda", OANDA_PAGE)
    assert "account number 101-004-1435156-001 taken from the payload" in err
    assert "3 fill(s), 1 cash movement(s), an account snapshot, 0 rejected, 3 skipped" in err


def test_a_given_account_number_is_checked_against_the_payload() -> None:
    code, lines, err = normalize("oanda", OANDA_PAGE, account_number="101-004-1435156-002")
    assert (code, lines) == (1, [])
    assert "cannot be mapped: account_mismatch" in err
    assert "taken from the payload" not in err


def test_an_ibkr_statement_prints_its_execution_and_what_it_skipped() -> None:
    code, lines, err = normalize("ibkr", IBKR_STATEMENT)
    assert code == 0
    assert kinds(lines) == ["fill", "skipped", "skipped"]
    assert lines[0]["fill"]["executed_at"] == "2011-08-11T20:20:00Z"
    assert "account number U123456 taken from the payload" in err


def test_an_mt5_webhook_body_prints_its_deals_and_balance(tmp_path: Path) -> None:
    path = tmp_path / "webhook.json"
    body = mt5_body(52557820, fixture_deals())
    path.write_text(json.dumps(body, default=str))
    code, lines, _ = normalize("mt5", path)
    assert code == 0
    assert kinds(lines) == ["fill"] * 3 + ["account"]
    assert Decimal(lines[0]["fill"]["volume"]) == Decimal("0.30")


def test_a_rejected_item_is_printed_with_its_reason(tmp_path: Path) -> None:
    page = json.loads(OANDA_PAGE.read_text())
    page["transactions"][1]["units"] = 10
    page["transactions"][1]["tradeOpened"]["units"] = 10
    path = tmp_path / "page.json"
    path.write_text(json.dumps(page))
    code, lines, _ = normalize("oanda", path)
    assert code == 0
    [rejection] = [line["rejection"] for line in lines if line["kind"] == "rejection"]
    assert (rejection["index"], rejection["code"]) == (1, "invalid_transaction")
    assert rejection["item"]["id"] == "3001"


@pytest.mark.parametrize(
    ("broker", "content", "code"),
    [
        ("oanda", b'{"kind": ', "malformed_json"),
        ("ibkr", b"<FlexQueryResponse>", "malformed_xml"),
        ("mt5", b"[]", "invalid_payload"),
    ],
)
def test_an_unreadable_event_exits_1_with_the_reason(
    tmp_path: Path, broker: str, content: bytes, code: str
) -> None:
    path = tmp_path / "body"
    path.write_bytes(content)
    status, lines, err = normalize(broker, path)
    assert (status, lines) == (1, [])
    assert f"cannot be mapped: {code}" in err


def test_a_missing_file_exits_1_and_says_so(tmp_path: Path) -> None:
    status, lines, err = normalize("oanda", tmp_path / "absent.json")
    assert (status, lines) == (1, [])
    assert "cannot read" in err


def test_an_unknown_broker_exits_1(tmp_path: Path) -> None:
    path = tmp_path / "page.json"
    shutil.copy(OANDA_PAGE, path)
    status, _, err = normalize("nope", path)
    assert status == 1
    assert "unknown_broker" in err
