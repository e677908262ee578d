"""The IBKR Flex adapter's pure core: credentials, Flex error codes, and where step two may go.
(Handing statements over in pages is tests/unit/test_ibkr_statements.py.)"""

from __future__ import annotations

import traceback

import pytest

from services.shared.brokers.errors import CredentialsRejected, UnexpectedResponse
from services.shared.brokers.ibkr.adapter import (
    flex_verdict,
    read_credentials,
    statement_url,
)
from tests.support.builders import FIXTURES

ROUND_TRIPS = (FIXTURES / "constructed" / "ibkr_flex_round_trips.xml").read_bytes()

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
