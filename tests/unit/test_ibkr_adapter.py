"""The IBKR Flex adapter's pure core: credentials, Flex error codes, trade times, the statement
digest that makes an unchanged statement the same event, and where step two may go."""

from __future__ import annotations

import traceback

import defusedxml.ElementTree as SafeET
import pytest

from services.poller.adapters import CredentialsRejected
from services.poller.adapters._errors import UnexpectedResponse
from services.poller.adapters.ibkr import (
    delivery_id,
    digest_statement,
    flex_verdict,
    normalize_timestamp,
    read_credentials,
    read_cursor,
    row_timestamp,
    statement_accounts,
    statement_url,
)
from tests.support.fake_flex import flex_statement

NEW_TRADE = (
    '<Trade accountId="U123456" currency="USD" symbol="AAPL" dateTime="20240805;101500" '
    'tradeDate="20240805" quantity="10" tradePrice="210.5" buySell="BUY" '
    'levelOfDetail="EXECUTION" />'
)


def test_credentials_are_a_token_and_a_query_id() -> None:
    credentials = read_credentials(b'{"token": " 1234567890 ", "query_id": 987654}')
    assert (credentials.token, credentials.query_id) == ("1234567890", "987654")
    assert "1234567890" not in repr(credentials)


@pytest.mark.parametrize(
    "stored",
    [
        b"secret-token-not-json",
        b'{"token": "secret-token"}',
        b'{"token": "secret-token", "query_id": "abc"}',
        b'["secret-token", "1"]',
        b"\xff secret-token",
    ],
)
def test_unreadable_credentials_are_rejected_without_quoting_them(stored: bytes) -> None:
    with pytest.raises(CredentialsRejected) as caught:
        read_credentials(stored)
    assert "secret-token" not in "".join(traceback.format_exception(caught.value))


@pytest.mark.parametrize(
    ("code", "verdict"),
    [
        ("1012", "credentials"),
        ("1015", "credentials"),
        ("1011", "credentials"),
        ("1013", "credentials"),
        ("1019", "retry_now"),
        ("1009", "retry_now"),
        ("1018", "retry_now"),
        ("1005", "retry_later"),
        ("1014", "refused"),
        ("1020", "refused"),
        (None, "refused"),
    ],
)
def test_flex_error_codes_decide_what_happens_next(code: str | None, verdict: str) -> None:
    assert flex_verdict(code) == verdict


@pytest.mark.parametrize(
    ("written", "normalized"),
    [
        ("20240801;153045", "20240801;153045"),
        ("2024-08-01;153045", "20240801;153045"),
        ("2021-02-03 10:01:50", "20210203;100150"),
        ("2021-02-03, 10:01", "20210203;100100"),
        ("20110811", "20110811;000000"),
    ],
)
def test_flex_trade_times_are_read_in_the_year_first_formats(written: str, normalized: str) -> None:
    assert normalize_timestamp(written) == normalized


@pytest.mark.parametrize("written", ["08/01/2024;153045", "01-Aug-24", "20241301;000000", "x"])
def test_other_date_formats_are_not_guessed(written: str) -> None:
    assert normalize_timestamp(written) is None


def test_a_row_without_datetime_is_placed_by_trade_date_and_time() -> None:
    assert row_timestamp({"tradeDate": "2011-08-11", "tradeTime": "162000"}) == "20110811;162000"
    assert row_timestamp({"symbol": "summary row"}) is None


def test_a_row_in_an_unreadable_date_format_stops_the_poll_with_the_fix() -> None:
    with pytest.raises(UnexpectedResponse, match="yyyyMMdd or yyyy-MM-dd"):
        row_timestamp({"dateTime": "08/01/2024;153045"})


def test_the_sample_statement_is_one_account_three_rows_newest_on_2024_08_01() -> None:
    root = SafeET.fromstring(flex_statement())
    digest = digest_statement(root)
    assert statement_accounts(root) == ["U123456"]
    assert digest.trade_rows == 3
    assert digest.newest_trade == "20240801;153045"


def test_the_same_trades_generated_again_are_the_same_delivery() -> None:
    first = digest_statement(SafeET.fromstring(flex_statement(generated="20240802;083000")))
    again = digest_statement(SafeET.fromstring(flex_statement(generated="20240803;090000")))
    assert delivery_id("U123456", first) == delivery_id("U123456", again)
    assert delivery_id("U123456", first).startswith("ibkr:U123456:")
    assert len(delivery_id("U123456", first).split(":")[2]) == 32


def test_a_new_trade_is_a_new_delivery_and_moves_the_newest_time() -> None:
    before = digest_statement(SafeET.fromstring(flex_statement()))
    after = digest_statement(SafeET.fromstring(flex_statement(extra_rows=[NEW_TRADE])))
    assert after.trades_sha256 != before.trades_sha256
    assert after.newest_trade == "20240805;101500"


def test_a_cursor_is_a_normalized_trade_time() -> None:
    assert read_cursor(None) is None
    assert read_cursor("20240801;153045") == "20240801;153045"
    with pytest.raises(ValueError, match="yyyyMMdd;HHmmss"):
        read_cursor("2024-08-01")


def test_step_two_follows_ibkr_s_own_url_over_https_only() -> None:
    returned = "https://gdcdyn.interactivebrokers.com/AccountManagement/FlexWebService/GetStatement"
    assert statement_url(returned, None) == returned
    for elsewhere in (
        "https://gdcdyn.interactivebrokers.com.evil.example/GetStatement",
        "http://gdcdyn.interactivebrokers.com/AccountManagement/FlexWebService/GetStatement",
    ):
        with pytest.raises(UnexpectedResponse, match="not on IBKR over https"):
            statement_url(elsewhere, None)


def test_with_an_api_url_override_both_steps_go_to_it() -> None:
    returned = "https://gdcdyn.interactivebrokers.com/AccountManagement/FlexWebService/GetStatement"
    assert (
        statement_url(returned, "http://127.0.0.1:9000/")
        == "http://127.0.0.1:9000/AccountManagement/FlexWebService/GetStatement"
    )
