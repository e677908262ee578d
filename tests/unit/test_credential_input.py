"""What an operator types into the connection commands is checked before anything is stored, and
a refusal says what is wrong without repeating a secret."""

from __future__ import annotations

import base64
from datetime import timedelta

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from services.shared.connection_admin.inputs import (
    MAX_CREDENTIAL_BYTES,
    InvalidInput,
    encode_public_key,
    parse_broker_credential,
    parse_overlap,
    parse_public_key,
)

PASSWORD = "s3cret-investor-pass"


# --- --overlap -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "overlap"),
    [
        ("24h", timedelta(hours=24)),
        ("30m", timedelta(minutes=30)),
        ("90s", timedelta(seconds=90)),
        ("2d", timedelta(days=2)),
        ("0", timedelta(0)),
        ("0h", timedelta(0)),
        (" 1h ", timedelta(hours=1)),
    ],
)
def test_an_overlap_is_a_whole_number_of_seconds_minutes_hours_or_days(
    text: str, overlap: timedelta
) -> None:
    assert parse_overlap(text) == overlap


@pytest.mark.parametrize("text", ["", "24", "h", "1.5h", "-1h", "1w", "24 h", "1H", "1h30m"])
def test_an_overlap_that_is_not_such_a_duration_is_refused(text: str) -> None:
    with pytest.raises(InvalidInput, match="not a duration"):
        parse_overlap(text)


def test_an_overlap_longer_than_thirty_days_is_refused() -> None:
    assert parse_overlap("30d") == timedelta(days=30)
    for text in ("31d", "999999999d"):
        with pytest.raises(InvalidInput, match="longer than the 30d allowed"):
            parse_overlap(text)


# --- broker credentials --------------------------------------------------------------------


def test_mt5_credentials_are_stored_as_canonical_json_of_login_password_and_server() -> None:
    given = f'\n {{"server": "X-Demo", "password": "{PASSWORD}", "login": "52557820"}}\n'

    stored = parse_broker_credential("mt5", given)

    assert stored == b'{"login":"52557820","password":"%s","server":"X-Demo"}' % PASSWORD.encode()


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        (PASSWORD, "must be a JSON object"),
        ('["52557820", "pw", "X-Demo"]', "must be a JSON object"),
        ('{"login": "1", "password": "pw"', "must be a JSON object"),
        ('{"login": "1", "password": "pw"}', "'server' as a non-empty string"),
        ('{"login": 52557820, "password": "pw", "server": "S"}', "'login' as a non-empty string"),
        ('{"login": "1", "password": "  ", "server": "S"}', "'password' as a non-empty string"),
        ('{"login": "1", "password": null, "server": "S"}', "'password' as a non-empty string"),
        (
            '{"login": "1", "password": "pw", "server": "S", "pasword": "x"}',
            "unknown field\\(s\\): pasword",
        ),
    ],
)
def test_mt5_credentials_that_are_not_that_object_are_refused(text: str, complaint: str) -> None:
    with pytest.raises(InvalidInput, match=complaint) as refused:
        parse_broker_credential("mt5", text)
    assert PASSWORD not in str(refused.value)


def test_a_token_broker_credential_is_the_token_without_surrounding_whitespace() -> None:
    assert parse_broker_credential("oanda", "  tok-123-abc\n") == b"tok-123-abc"


@pytest.mark.parametrize("broker", ["mt5", "oanda"])
@pytest.mark.parametrize("text", ["", "\n", "  \t\n"])
def test_empty_input_is_refused_for_every_broker(broker: str, text: str) -> None:
    with pytest.raises(InvalidInput, match="empty"):
        parse_broker_credential(broker, text)


def test_input_larger_than_any_credential_is_refused() -> None:
    with pytest.raises(InvalidInput, match="over"):
        parse_broker_credential("oanda", "t" * (MAX_CREDENTIAL_BYTES + 1))


# --- Ed25519 public keys -------------------------------------------------------------------


def fresh_public_key() -> bytes:
    return Ed25519PrivateKey.generate().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def test_a_whpk_key_gives_its_raw_ed25519_public_key() -> None:
    raw = fresh_public_key()
    assert parse_public_key(encode_public_key(raw)) == raw
    assert encode_public_key(raw).startswith("whpk_")


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        (base64.b64encode(bytes(range(1, 33))).decode(), "starts with 'whpk_'"),
        ("whsec_" + base64.b64encode(bytes(range(1, 33))).decode(), "starts with 'whpk_'"),
        ("whpk_not base64!", "not valid base64"),
        ("whpk_" + base64.urlsafe_b64encode(b"\xfb" * 32).decode(), "not valid base64"),
        ("whpk_" + base64.b64encode(b"k" * 31).decode(), "32 bytes, got 31"),
        ("whpk_" + base64.b64encode(b"k" * 33).decode(), "32 bytes, got 33"),
        ("whpk_", "32 bytes, got 0"),
    ],
)
def test_a_key_that_is_not_whpk_and_32_bytes_of_base64_is_refused(
    text: str, complaint: str
) -> None:
    with pytest.raises(InvalidInput, match=complaint):
        parse_public_key(text)


@pytest.mark.parametrize(
    "raw",
    [
        bytes([1]) + bytes(31),  # the identity
        bytes(32),  # order 4
        bytes.fromhex(
            "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"
        ),  # order 2
        bytes.fromhex("26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05"),  # 8
    ],
)
def test_a_small_order_key_is_refused_as_anyone_could_sign_for_it(raw: bytes) -> None:
    with pytest.raises(InvalidInput, match="small-order"):
        parse_public_key(encode_public_key(raw))


def test_why_small_order_keys_are_refused_the_identity_verifies_a_forgery() -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    identity = bytes([1]) + bytes(31)
    # R = the identity, S = 0: valid for any message under this key, with no private key.
    Ed25519PublicKey.from_public_bytes(identity).verify(identity + bytes(32), b"any body")
