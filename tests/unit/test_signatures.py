"""Standard Webhooks verification, checked against the specification's own test vectors."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.ingest.signatures import (
    SignatureRejected,
    check_timestamp,
    decode_secret,
    encode_secret,
    parse_headers,
    sign,
    verify,
)

# The specification's reference vector (standard-webhooks, libraries/python tests).
SPEC_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SPEC_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
SPEC_TIMESTAMP = 1614265330
SPEC_PAYLOAD = b'{"test": 2432232314}'
SPEC_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
KEY = decode_secret(SPEC_SECRET)


def _headers(signature: str = SPEC_SIGNATURE) -> dict[str, str]:
    return {
        "webhook-id": SPEC_ID,
        "webhook-timestamp": str(SPEC_TIMESTAMP),
        "webhook-signature": signature,
    }


def test_signing_reproduces_the_specification_vector() -> None:
    assert sign(KEY, SPEC_ID, SPEC_TIMESTAMP, SPEC_PAYLOAD) == SPEC_SIGNATURE


def test_the_specification_vector_verifies() -> None:
    verify(parse_headers(_headers()), SPEC_PAYLOAD, [KEY])


def test_a_secret_verifies_with_or_without_its_prefix() -> None:
    assert decode_secret(SPEC_SECRET) == decode_secret(SPEC_SECRET.removeprefix("whsec_"))
    assert encode_secret(KEY) == SPEC_SECRET


@pytest.mark.parametrize("missing", ["webhook-id", "webhook-timestamp", "webhook-signature"])
def test_a_missing_header_is_rejected(missing: str) -> None:
    headers = _headers()
    del headers[missing]
    with pytest.raises(SignatureRejected, match="missing_header"):
        parse_headers(headers)


@pytest.mark.parametrize("timestamp", ["hello", "-5", "1.5", "\uff11\uff12\uff13", "9" * 20])
def test_a_timestamp_that_is_not_plain_seconds_is_rejected(timestamp: str) -> None:
    headers = _headers() | {"webhook-timestamp": timestamp}
    with pytest.raises(SignatureRejected, match="malformed_timestamp"):
        parse_headers(headers)


def test_the_specifications_wrong_signature_is_rejected() -> None:
    wrong = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OA="
    with pytest.raises(SignatureRejected, match="signature_mismatch"):
        verify(parse_headers(_headers(wrong)), SPEC_PAYLOAD, [KEY])


def test_a_header_with_several_signatures_verifies_if_any_matches() -> None:
    decoy = "Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc="
    header = f"v1,{decoy} v2,{decoy} {SPEC_SIGNATURE} v1,{decoy}"
    verify(parse_headers(_headers(header)), SPEC_PAYLOAD, [KEY])


def test_any_active_key_verifies_so_secrets_can_rotate() -> None:
    retired, current = b"r" * 32, KEY
    verify(parse_headers(_headers()), SPEC_PAYLOAD, [retired, current])
    with pytest.raises(SignatureRejected):
        verify(parse_headers(_headers()), SPEC_PAYLOAD, [retired])


@pytest.mark.parametrize(
    "signature", ["v1,not base64!!", "v1,", ",abc", "v2," + SPEC_SIGNATURE[3:]]
)
def test_unusable_signature_entries_never_verify(signature: str) -> None:
    with pytest.raises(SignatureRejected):
        verify(parse_headers(_headers(signature)), SPEC_PAYLOAD, [KEY])


@pytest.mark.parametrize(
    ("offset", "code"), [(-301, "timestamp_too_old"), (301, "timestamp_in_future")]
)
def test_timestamps_outside_the_tolerance_are_rejected_both_ways(offset: int, code: str) -> None:
    now = 1_700_000_000
    with pytest.raises(SignatureRejected, match=code):
        check_timestamp(now + offset, now, tolerance_seconds=300)
    check_timestamp(now + offset // abs(offset) * 300, now, tolerance_seconds=300)


@settings(max_examples=200, deadline=None)
@given(
    body=st.binary(min_size=1, max_size=512),
    webhook_id=st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=40),
    timestamp=st.integers(min_value=0, max_value=10**10),
    key=st.binary(min_size=16, max_size=64),
    position=st.integers(min_value=0),
)
def test_signing_then_verifying_round_trips_and_any_changed_byte_fails(
    body: bytes, webhook_id: str, timestamp: int, key: bytes, position: int
) -> None:
    delivery = parse_headers(
        {
            "webhook-id": webhook_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(key, webhook_id, timestamp, body),
        }
    )
    verify(delivery, body, [key])
    index = position % len(body)
    tampered = body[:index] + bytes([body[index] ^ 0x01]) + body[index + 1 :]
    with pytest.raises(SignatureRejected):
        verify(delivery, tampered, [key])


def test_the_signature_is_base64_of_a_sha256_digest() -> None:
    assert len(base64.b64decode(SPEC_SIGNATURE.removeprefix("v1,"))) == 32
