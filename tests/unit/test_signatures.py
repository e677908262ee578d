"""Standard Webhooks verification, held to the specification's own vector and library cases."""

from __future__ import annotations

import base64

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from hypothesis import given, settings
from hypothesis import strategies as st

from services.shared.signatures import (
    SignatureRejected,
    SignedDelivery,
    VerificationKeys,
    check_timestamp,
    decode_public_key,
    decode_secret,
    encode_public_key,
    encode_secret,
    parse_headers,
    sign,
    sign_v1a,
    verify,
)

# The reference vector of standard-webhooks (libraries/python/tests/test_webhooks.py).
SPEC_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SPEC_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
SPEC_TIMESTAMP = 1614265330
SPEC_PAYLOAD = b'{"test": 2432232314}'
SPEC_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
SPEC_WRONG_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OA="
SPEC_DECOY = "Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc="
SPEC_KEY = decode_secret(SPEC_SECRET)
TOLERANCE = 300


def spec_headers(signature: str = SPEC_SIGNATURE) -> dict[str, str]:
    return {
        "webhook-id": SPEC_ID,
        "webhook-timestamp": str(SPEC_TIMESTAMP),
        "webhook-signature": signature,
    }


def rejection_code(headers: dict[str, str], body: bytes, keys: list[bytes]) -> str:
    """Run the whole check as ingest does, at the vector's own time, and say why it failed."""
    with pytest.raises(SignatureRejected) as raised:
        delivery = parse_headers(headers)
        check_timestamp(delivery.timestamp, SPEC_TIMESTAMP, TOLERANCE)
        verify(delivery, body, keys)
    return raised.value.code


def test_signing_reproduces_the_specification_vector() -> None:
    assert sign(SPEC_KEY, SPEC_ID, SPEC_TIMESTAMP, SPEC_PAYLOAD) == SPEC_SIGNATURE


def test_the_specification_vector_verifies() -> None:
    delivery = parse_headers(spec_headers())
    check_timestamp(delivery.timestamp, SPEC_TIMESTAMP, TOLERANCE)
    verify(delivery, SPEC_PAYLOAD, [SPEC_KEY])


def test_headers_parse_into_id_timestamp_and_versioned_signatures() -> None:
    assert parse_headers(spec_headers()) == SignedDelivery(
        SPEC_ID, SPEC_TIMESTAMP, (("v1", SPEC_SIGNATURE.removeprefix("v1,")),)
    )


@pytest.mark.parametrize("missing", ["webhook-id", "webhook-timestamp", "webhook-signature"])
def test_a_delivery_missing_a_header_is_rejected(missing: str) -> None:
    headers = spec_headers()
    del headers[missing]
    assert rejection_code(headers, SPEC_PAYLOAD, [SPEC_KEY]) == "missing_header"


@pytest.mark.parametrize("missing", ["webhook-id", "webhook-timestamp", "webhook-signature"])
def test_an_empty_header_counts_as_missing(missing: str) -> None:
    headers = spec_headers() | {missing: ""}
    assert rejection_code(headers, SPEC_PAYLOAD, [SPEC_KEY]) == "missing_header"


@pytest.mark.parametrize(
    "timestamp",
    ["hello", "-5", "1614265330.0", "1e9", " 1614265330", "\uff11\uff16\uff11\uff14", "9" * 13],
)
def test_a_timestamp_that_is_not_plain_epoch_seconds_is_rejected(timestamp: str) -> None:
    headers = spec_headers() | {"webhook-timestamp": timestamp}
    assert rejection_code(headers, SPEC_PAYLOAD, [SPEC_KEY]) == "malformed_timestamp"


@pytest.mark.parametrize("webhook_id", ["x" * 257, "msg\n1", "msg\x001"])
def test_an_overlong_or_unprintable_id_is_rejected(webhook_id: str) -> None:
    headers = spec_headers() | {"webhook-id": webhook_id}
    assert rejection_code(headers, SPEC_PAYLOAD, [SPEC_KEY]) == "malformed_id"


def test_the_specifications_wrong_signature_is_rejected() -> None:
    headers = spec_headers(SPEC_WRONG_SIGNATURE)
    assert rejection_code(headers, SPEC_PAYLOAD, [SPEC_KEY]) == "signature_mismatch"


@pytest.mark.parametrize(
    ("sent_at", "code"),
    [
        (SPEC_TIMESTAMP - TOLERANCE - 1, "timestamp_too_old"),
        (SPEC_TIMESTAMP + TOLERANCE + 1, "timestamp_in_future"),
    ],
)
def test_a_timestamp_beyond_the_tolerance_is_rejected_in_either_direction(
    sent_at: int, code: str
) -> None:
    with pytest.raises(SignatureRejected) as raised:
        check_timestamp(sent_at, SPEC_TIMESTAMP, TOLERANCE)
    assert raised.value.code == code


@pytest.mark.parametrize("skew", [-TOLERANCE, 0, TOLERANCE])
def test_a_timestamp_within_the_tolerance_is_accepted(skew: int) -> None:
    check_timestamp(SPEC_TIMESTAMP + skew, SPEC_TIMESTAMP, TOLERANCE)


def test_a_correctly_signed_but_stale_delivery_is_rejected_before_verification() -> None:
    delivery = parse_headers(spec_headers())
    with pytest.raises(SignatureRejected, match="timestamp_too_old"):
        check_timestamp(delivery.timestamp, SPEC_TIMESTAMP + TOLERANCE + 1, TOLERANCE)


def test_a_header_with_several_signatures_verifies_when_only_one_entry_is_valid() -> None:
    header = f"v1,{SPEC_DECOY} v2,{SPEC_DECOY} {SPEC_SIGNATURE} v1,{SPEC_DECOY}"
    verify(parse_headers(spec_headers(header)), SPEC_PAYLOAD, [SPEC_KEY])


def test_a_header_of_only_decoy_signatures_is_rejected() -> None:
    header = f"v1,{SPEC_DECOY} v2,{SPEC_DECOY} v1,{SPEC_DECOY}"
    assert rejection_code(spec_headers(header), SPEC_PAYLOAD, [SPEC_KEY]) == "signature_mismatch"


def test_a_valid_digest_under_another_version_label_is_not_accepted() -> None:
    header = "v2," + SPEC_SIGNATURE.removeprefix("v1,")
    assert rejection_code(spec_headers(header), SPEC_PAYLOAD, [SPEC_KEY]) == "signature_mismatch"


def test_the_secret_decodes_to_the_same_key_with_or_without_its_prefix() -> None:
    unprefixed = SPEC_SECRET.removeprefix("whsec_")
    assert decode_secret(unprefixed) == SPEC_KEY
    verify(parse_headers(spec_headers()), SPEC_PAYLOAD, [decode_secret(unprefixed)])


def test_a_key_encodes_back_to_its_prefixed_secret() -> None:
    assert encode_secret(SPEC_KEY) == SPEC_SECRET


@pytest.mark.parametrize(
    "secret",
    [
        "whsec_not base64!",
        "whsec_abc",
        "%%%",
        "whsec_" + "ä" * 32,
    ],
)
def test_a_secret_that_is_not_base64_is_refused(secret: str) -> None:
    with pytest.raises(ValueError, match="not a valid webhook secret"):
        decode_secret(secret)


@pytest.mark.parametrize("secret", ["whsec_", ""])
def test_an_empty_secret_is_refused_since_anyone_can_sign_with_an_empty_key(secret: str) -> None:
    with pytest.raises(ValueError):
        decode_secret(secret)


def test_during_rotation_a_signature_by_the_second_key_verifies() -> None:
    retiring = b"r" * 32
    verify(parse_headers(spec_headers()), SPEC_PAYLOAD, [retiring, SPEC_KEY])


def test_after_rotation_a_signature_by_the_removed_key_is_rejected() -> None:
    assert rejection_code(spec_headers(), SPEC_PAYLOAD, [b"n" * 32]) == "signature_mismatch"


def test_no_active_keys_means_nothing_verifies() -> None:
    assert rejection_code(spec_headers(), SPEC_PAYLOAD, []) == "signature_mismatch"


@pytest.mark.parametrize(
    "signature",
    [
        "v1,not base64!!",
        "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE",  # padding stripped
        "v1,====",
        "v1," + base64.b64encode(b"\x00" * 32).decode(),
        "v1," + SPEC_SIGNATURE.removeprefix("v1,")[:22],  # a truncated digest
    ],
)
def test_garbage_in_a_signature_entry_never_verifies(signature: str) -> None:
    assert rejection_code(spec_headers(signature), SPEC_PAYLOAD, [SPEC_KEY]) == "signature_mismatch"


def test_a_garbage_entry_beside_the_valid_one_does_not_spoil_it() -> None:
    header = f"v1,!!garbage!! {SPEC_SIGNATURE}"
    verify(parse_headers(spec_headers(header)), SPEC_PAYLOAD, [SPEC_KEY])


@pytest.mark.parametrize("signature", ["v1,", ",abc", "v1", "   "])
def test_a_signature_header_with_no_usable_entry_is_malformed(signature: str) -> None:
    assert rejection_code(spec_headers(signature), SPEC_PAYLOAD, [SPEC_KEY]) == (
        "malformed_signature"
    )


@pytest.mark.parametrize("index", [0, 9, len(SPEC_PAYLOAD) - 1])
def test_a_body_tampered_by_one_byte_is_rejected(index: int) -> None:
    tampered = bytearray(SPEC_PAYLOAD)
    tampered[index] ^= 0x20
    assert rejection_code(spec_headers(), bytes(tampered), [SPEC_KEY]) == "signature_mismatch"


@pytest.mark.parametrize(
    "body", [SPEC_PAYLOAD + b" ", SPEC_PAYLOAD[:-1], b"", b'{"test":2432232314}']
)
def test_a_body_with_bytes_added_removed_or_reformatted_is_rejected(body: bytes) -> None:
    assert rejection_code(spec_headers(), body, [SPEC_KEY]) == "signature_mismatch"


@pytest.mark.parametrize(
    "changed",
    [{"webhook-id": "msg_another"}, {"webhook-timestamp": str(SPEC_TIMESTAMP + 1)}],
)
def test_a_signature_does_not_carry_over_to_another_id_or_timestamp(
    changed: dict[str, str],
) -> None:
    headers = spec_headers() | changed
    assert rejection_code(headers, SPEC_PAYLOAD, [SPEC_KEY]) == "signature_mismatch"


_webhook_ids = st.text(
    alphabet=st.characters(exclude_categories=["C", "Z"]), min_size=1, max_size=256
)
_timestamps = st.integers(min_value=0, max_value=10**12 - 1)


@settings(max_examples=200, deadline=None)
@given(
    body=st.binary(max_size=1024),
    webhook_id=_webhook_ids,
    timestamp=_timestamps,
    key=st.binary(min_size=1, max_size=64),
)
def test_whatever_is_signed_verifies_through_the_headers(
    body: bytes, webhook_id: str, timestamp: int, key: bytes
) -> None:
    headers = {
        "webhook-id": webhook_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(key, webhook_id, timestamp, body),
    }
    verify(parse_headers(headers), body, [key])


@settings(max_examples=200, deadline=None)
@given(
    body=st.binary(min_size=1, max_size=1024),
    webhook_id=_webhook_ids,
    timestamp=_timestamps,
    key=st.binary(min_size=1, max_size=64),
    data=st.data(),
)
def test_any_single_byte_change_to_a_signed_body_is_rejected(
    body: bytes, webhook_id: str, timestamp: int, key: bytes, data: st.DataObject
) -> None:
    version, _, digest = sign(key, webhook_id, timestamp, body).partition(",")
    delivery = SignedDelivery(webhook_id, timestamp, ((version, digest),))
    index = data.draw(st.integers(min_value=0, max_value=len(body) - 1), label="index")
    replacement = data.draw(
        st.integers(min_value=0, max_value=255).filter(lambda b: b != body[index]),
        label="replacement",
    )
    tampered = body[:index] + bytes([replacement]) + body[index + 1 :]
    with pytest.raises(SignatureRejected, match="signature_mismatch"):
        verify(delivery, tampered, [key])


# --- v1a: ed25519 signatures verified with the sender's public key --------------------------

SENDER = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
SENDER_PUBLIC = SENDER.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def v1a_delivery(signature: str) -> SignedDelivery:
    return parse_headers(spec_headers(signature))


def test_a_v1a_signature_verifies_with_the_senders_public_key() -> None:
    signature = sign_v1a(SENDER, SPEC_ID, SPEC_TIMESTAMP, SPEC_PAYLOAD)
    verify(v1a_delivery(signature), SPEC_PAYLOAD, VerificationKeys(public_keys=[SENDER_PUBLIC]))


def test_a_v1a_signature_over_another_body_is_rejected() -> None:
    signature = sign_v1a(SENDER, SPEC_ID, SPEC_TIMESTAMP, SPEC_PAYLOAD)
    with pytest.raises(SignatureRejected):
        verify(v1a_delivery(signature), b"{}", VerificationKeys(public_keys=[SENDER_PUBLIC]))


def test_an_hmac_secret_never_verifies_a_v1a_entry_nor_a_public_key_a_v1_entry() -> None:
    v1a = sign_v1a(SENDER, SPEC_ID, SPEC_TIMESTAMP, SPEC_PAYLOAD)
    with pytest.raises(SignatureRejected):
        verify(v1a_delivery(v1a), SPEC_PAYLOAD, VerificationKeys(secrets=[SPEC_KEY]))
    with pytest.raises(SignatureRejected):
        verify(
            v1a_delivery(SPEC_SIGNATURE),
            SPEC_PAYLOAD,
            VerificationKeys(public_keys=[SENDER_PUBLIC]),
        )


def test_mixed_entries_verify_if_any_matches_any_key_of_its_kind() -> None:
    v1a = sign_v1a(SENDER, SPEC_ID, SPEC_TIMESTAMP, SPEC_PAYLOAD)
    delivery = v1a_delivery(f"{SPEC_WRONG_SIGNATURE} v1a,AAAA {v1a}")
    verify(delivery, SPEC_PAYLOAD, VerificationKeys([SPEC_KEY], [SENDER_PUBLIC]))


def test_public_keys_round_trip_through_their_whpk_form() -> None:
    assert decode_public_key(encode_public_key(SENDER_PUBLIC)) == SENDER_PUBLIC


@pytest.mark.parametrize("text", ["whpk_", "whpk_AAAA", "whpk_!!!", "whsec_" + "A" * 44])
def test_a_malformed_public_key_is_refused_clearly(text: str) -> None:
    with pytest.raises(ValueError, match="not a valid webhook public key"):
        decode_public_key(text)
