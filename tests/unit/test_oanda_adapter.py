"""The OANDA adapter's pure core: id windows, cursors, tokens, hosts and the page it hands over."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest

from services.poller.adapters import CredentialsRejected
from services.poller.adapters.oanda import (
    LIVE_URL,
    PRACTICE_URL,
    IdWindow,
    base_url,
    delivery_id,
    id_windows,
    page_body,
    read_cursor,
    read_token,
)


def test_a_never_synced_account_is_read_from_id_1_in_windows_of_at_most_1000() -> None:
    assert id_windows(read_cursor(None), 2500) == [
        IdWindow(1, 1000),
        IdWindow(1001, 2000),
        IdWindow(2001, 2500),
    ]


def test_windows_start_right_after_the_cursor() -> None:
    assert id_windows(2123, 2125) == [IdWindow(2124, 2125)]
    assert id_windows(999, 1000) == [IdWindow(1000, 1000)]


def test_nothing_after_the_cursor_is_no_window() -> None:
    assert id_windows(2123, 2123) == []


def test_a_window_never_exceeds_what_idrange_accepts() -> None:
    with pytest.raises(ValueError, match="1 to 1000"):
        id_windows(0, 5000, size=1001)


@pytest.mark.parametrize("cursor", ["", "12a", "-3", "1.5", " 7"])
def test_a_cursor_that_is_not_a_transaction_id_is_refused(cursor: str) -> None:
    with pytest.raises(ValueError, match="transaction id"):
        read_cursor(cursor)


def test_the_token_is_the_stored_text_without_surrounding_whitespace() -> None:
    assert read_token(b"  abc123-def456\n") == "abc123-def456"


@pytest.mark.parametrize("stored", [b"", b"   ", b"two words", b"\xff\xfe-secret-bytes"])
def test_stored_bytes_that_are_no_token_are_rejected_without_quoting_them(stored: bytes) -> None:
    with pytest.raises(CredentialsRejected) as caught:
        read_token(stored)
    assert caught.value.status_code == 0
    assert "words" not in str(caught.value) and "secret" not in str(caught.value)


def test_demo_connections_use_the_practice_host_and_live_ones_fxtrade() -> None:
    assert base_url("demo", None) == PRACTICE_URL == "https://api-fxpractice.oanda.com"
    assert base_url("live", None) == LIVE_URL == "https://api-fxtrade.oanda.com"


def test_a_per_connection_api_url_overrides_the_host() -> None:
    assert base_url("live", "http://127.0.0.1:8080/") == "http://127.0.0.1:8080"


def test_the_delivery_id_names_the_account_and_the_window() -> None:
    assert (
        delivery_id("101-004-1435156-001", IdWindow(1001, 2000))
        == "oanda:101-004-1435156-001:txn:1001-2000"
    )


def test_the_page_keeps_oanda_values_exactly_as_oanda_wrote_them() -> None:
    transaction = {"id": "7", "units": "-100", "price": "1.09289", "userID": 1435156}
    account = {"balance": "35454.4740", "marginRate": Decimal("0.050"), "openTradeCount": 2}
    body = page_body(
        account_id="101-004-1435156-001",
        environment="practice",
        window=IdWindow(7, 7),
        last_transaction_id="7",
        transactions=[transaction],
        account=account,
        open_trades=[],
    )
    assert b'"marginRate":0.050' in body  # a JSON number stays the same digits, not a float
    page = json.loads(body, parse_float=Decimal)
    assert list(page) == [
        "kind",
        "accountID",
        "environment",
        "from_id",
        "to_id",
        "lastTransactionID",
        "transactions",
        "account",
        "openTrades",
    ]
    assert page["kind"] == "oanda.transactions"
    assert (page["from_id"], page["to_id"], page["lastTransactionID"]) == ("7", "7", "7")
    assert page["transactions"] == [transaction]
    assert page["account"]["balance"] == "35454.4740"


def test_pages_before_the_last_carry_no_account_or_open_trades() -> None:
    body = page_body(
        account_id="a",
        environment="live",
        window=IdWindow(1, 1000),
        last_transaction_id="2500",
        transactions=[],
        account=None,
        open_trades=None,
    )
    page = json.loads(body)
    assert page["environment"] == "live"
    assert page["account"] is None and page["openTrades"] is None
