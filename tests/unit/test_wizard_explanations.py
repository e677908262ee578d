"""What the wizard tells a person whose credentials did not verify: each adapter failure becomes a
message they can act on, in the API's refusal of the right status, never quoting what they typed;
and which accounts may be connected as demo or live."""

from __future__ import annotations

import pytest

from services.api.errors import ValidationFailed
from services.api.wizard import entered_credentials
from services.api.wizard_errors import (
    AccountMismatched,
    BrokerFailed,
    BrokerRateLimited,
    BrokerUnreachable,
    CredentialsRefused,
    TokenExpired,
    UnknownServer,
    refusal,
)
from services.shared.brokers import broker
from services.shared.brokers.discovery import (
    FoundAccount,
    VerificationFailed,
    explain,
    type_mismatch,
)
from services.shared.brokers.errors import (
    AccountMismatch,
    BrokerRequestFailed,
    BrokerUnavailable,
    CredentialsRejected,
    CredentialsUnreadable,
    UnexpectedResponse,
)
from services.shared.brokers.ibkr.adapter import paper_account

TIMEOUT = 20.0


def test_a_refused_token_is_a_400_that_says_what_to_check() -> None:
    failed = explain("OANDA", CredentialsRejected(401, "Insufficient authorization"), TIMEOUT)
    answer = refusal(failed)
    assert isinstance(answer, CredentialsRefused) and answer.status_code == 400
    assert answer.body()["error"] == "credentials_rejected"
    assert "OANDA refused these credentials" in answer.body()["detail"]
    assert "demo or live" in answer.body()["detail"]


@pytest.mark.parametrize(
    ("code", "kind", "words"),
    [
        ("1012", TokenExpired, "has expired"),
        ("1015", CredentialsRefused, "does not recognise this Flex token"),
        ("1013", CredentialsRefused, "IP restriction"),
        ("1011", CredentialsRefused, "inactive"),
    ],
)
def test_flex_s_codes_of_a_refused_token_are_told_in_words(
    code: str, kind: type, words: str
) -> None:
    answer = refusal(explain("IBKR", CredentialsRejected(401, f"Flex error {code}", code), TIMEOUT))
    assert type(answer) is kind
    assert words in answer.body()["detail"]


def test_an_unknown_flex_query_is_the_person_s_to_fix_not_the_broker_s_failure() -> None:
    failed = explain("IBKR", BrokerRequestFailed("ibkr", "SendRequest", "x", error_code="1014"), 1)
    assert failed.kind == "refused"
    assert "query id" in refusal(failed).body()["detail"]


def test_unreadable_credentials_are_refused_without_repeating_them() -> None:
    answer = refusal(explain("OANDA", CredentialsUnreadable("oanda", "an API token"), TIMEOUT))
    assert isinstance(answer, CredentialsRefused)
    assert "not OANDA credentials" in answer.body()["detail"]


def test_a_broker_limiting_us_is_a_429_with_its_retry_after_rounded_up() -> None:
    answer = refusal(explain("OANDA", BrokerUnavailable("429", retry_after=2.2), TIMEOUT))
    assert isinstance(answer, BrokerRateLimited) and answer.status_code == 429
    assert answer.headers() == {"Retry-After": "3"}
    assert answer.body()["error"] == "broker_rate_limited"


def test_a_broker_that_is_down_or_too_slow_is_unreachable() -> None:
    down = refusal(explain("OANDA", BrokerUnavailable("connect failed"), TIMEOUT))
    slow = refusal(explain("OANDA", TimeoutError(), TIMEOUT))
    assert isinstance(down, BrokerUnreachable) and isinstance(slow, BrokerUnreachable)
    assert down.status_code == 502
    assert "within 20 seconds" in slow.body()["detail"]


def test_an_answer_we_cannot_read_is_the_broker_s_error_and_says_nothing_of_it() -> None:
    raw = UnexpectedResponse("oanda", "https://api/v3/accounts", "no `accounts` list")
    answer = refusal(explain("OANDA", raw, TIMEOUT))
    assert isinstance(answer, BrokerFailed)
    assert "accounts" not in answer.body()["detail"]


def test_the_broker_s_own_refusals_of_provisioning_keep_their_meaning() -> None:
    unknown = refusal(VerificationFailed("refused", "server_not_found", "no server 'X'"))
    other = refusal(explain("IBKR", AccountMismatch("ibkr", "U1", "U2"), TIMEOUT))
    assert isinstance(unknown, UnknownServer) and unknown.body()["detail"] == "no server 'X'"
    assert isinstance(other, AccountMismatched)


def test_anything_else_is_not_explained_as_the_broker_s() -> None:
    with pytest.raises(TypeError):
        explain("OANDA", KeyError("bug"), TIMEOUT)


def test_a_real_account_is_not_a_demo_connection_and_the_reverse() -> None:
    real = FoundAccount("U1234567", "live")
    paper = FoundAccount("DU1234567", "demo")
    unsaid = FoundAccount("42", None)
    assert type_mismatch("IBKR", real, "live") is None
    assert type_mismatch("IBKR", unsaid, "demo") is None
    refused = type_mismatch("IBKR", real, "demo")
    assert refused is not None and "real-money account" in refused and "live connection" in refused
    refused = type_mismatch("IBKR", paper, "live")
    assert refused is not None and "demo (paper) account" in refused


def test_ibkr_paper_accounts_are_the_d_numbered_ones() -> None:
    assert paper_account("DU1234567") and paper_account("df7654321")
    assert not paper_account("U1234567") and not paper_account("F1234567")


def test_entered_credentials_take_the_vault_s_form_of_each_broker() -> None:
    assert entered_credentials(broker("oanda"), "poll", {"token": "  abc  "}) == b"abc"
    ibkr = entered_credentials(broker("ibkr"), "poll", {"token": "t", "query_id": "1"})
    assert ibkr == b'{"token":"t","query_id":"1"}'
    ea = entered_credentials(broker("mt5"), "webhook", {"login": " 5 ", "server": "S"})
    assert ea == b'{"login":"5","server":"S"}'


@pytest.mark.parametrize(
    ("name", "sync", "fields"),
    [
        ("oanda", "poll", {"token": "t", "extra": "x"}),
        ("ibkr", "poll", {"token": "secret-token"}),
        ("mt5", "poll", {"login": "1", "server": "S"}),
        ("mt5", "webhook", {"login": "1", "server": "S", "password": "secret-token"}),
        ("mt5", "webhook", {"login": "1\x00", "server": "S"}),
    ],
)
def test_a_form_not_the_broker_s_is_refused_by_field_without_quoting_it(
    name: str, sync: str, fields: dict[str, str]
) -> None:
    with pytest.raises(ValidationFailed) as refused:
        entered_credentials(broker(name), sync, fields)
    (problem,) = refused.value.problems
    assert problem.path.startswith("body.credentials")
    assert "secret-token" not in problem.message
