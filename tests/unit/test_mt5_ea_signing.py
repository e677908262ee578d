"""The Expert Advisor's own signing code (SHA-256 through CryptEncode, HMAC built on it, base64,
the whsec_ secret), compiled from its .mqh source with g++, held to the published vectors:
FIPS 180-4 SHA-256, RFC 4231 HMAC-SHA256, RFC 4648 base64, and the Standard Webhooks vector."""

from __future__ import annotations

import base64
import hashlib
import hmac
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.shared.signatures import decode_secret, parse_headers, verify
from tests.support.mt5_ea import EaHarness, ea_harness, utf16_hex
from tests.unit.test_signatures import (
    SPEC_ID,
    SPEC_PAYLOAD,
    SPEC_SECRET,
    SPEC_SIGNATURE,
    SPEC_TIMESTAMP,
)


@pytest.fixture(scope="module")
def ea(tmp_path_factory: pytest.TempPathFactory) -> EaHarness:
    return ea_harness(Path(tmp_path_factory.getbasetemp()))


@pytest.mark.parametrize(
    ("message", "digest"),
    [
        (b"abc", "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"),
        (
            b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq",
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1",
        ),
        (
            b"abcdefghbcdefghicdefghijdefghijkefghijklfghijklmghijklmnhijklmnoijklmnopjklmnopqklmnop"
            b"qrlmnopqrsmnopqrstnopqrstu",
            "cf5b16a778af8380036ce59e7b0492370b249b11e8f07a51afac45037afee9d1",
        ),
    ],
)
def test_sha256_matches_the_fips_180_vectors(ea: EaHarness, message: bytes, digest: str) -> None:
    assert ea.line("sha256", message.hex()) == digest


# RFC 4231 section 4: test cases 1-4, 6 and 7 (key, data, HMAC-SHA256); case 5 is truncated.
RFC_4231 = [
    (
        b"\x0b" * 20,
        b"Hi There",
        "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7",
    ),
    (
        b"Jefe",
        b"what do ya want for nothing?",
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
    ),
    (
        b"\xaa" * 20,
        b"\xdd" * 50,
        "773ea91e36800e46854db8ebd09181a72959098b3ef8c122d9635514ced565fe",
    ),
    (
        bytes(range(1, 26)),
        b"\xcd" * 50,
        "82558a389a443c0ea4cc819899f2083a85f0faa3e578f8077a2e3ff46729665b",
    ),
    (
        b"\xaa" * 131,
        b"Test Using Larger Than Block-Size Key - Hash Key First",
        "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54",
    ),
    (
        b"\xaa" * 131,
        b"This is a test using a larger than block-size key and a larger than block-size data."
        b" The key needs to be hashed before being used by the HMAC algorithm.",
        "9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2",
    ),
]


@pytest.mark.parametrize(("key", "data", "mac"), RFC_4231)
def test_hmac_sha256_matches_the_rfc_4231_vectors(
    ea: EaHarness, key: bytes, data: bytes, mac: str
) -> None:
    assert ea.line("hmac", key.hex(), data.hex()) == mac


def test_hmac_sha256_matches_rfc_4231_case_5_truncated_to_128_bits(ea: EaHarness) -> None:
    mac = ea.line("hmac", (b"\x0c" * 20).hex(), b"Test With Truncation".hex())
    assert mac[:32] == "a3b6167473100ee06e0c796c2955552b"


@pytest.mark.parametrize("key_length", [1, 32, 63, 64, 65, 200])
def test_hmac_keys_either_side_of_the_64_byte_block_are_handled_as_rfc_2104_says(
    ea: EaHarness, key_length: int
) -> None:
    key = bytes((i * 7 + 3) % 256 for i in range(key_length))
    message = b"mt5-1-2-3-1.1717405200." + bytes(range(256))
    expected = hmac.new(key, message, hashlib.sha256).hexdigest()
    assert ea.line("hmac", key.hex(), message.hex()) == expected


@pytest.mark.parametrize(
    ("data", "text"),
    [
        (b"", ""),
        (b"f", "Zg=="),
        (b"fo", "Zm8="),
        (b"foo", "Zm9v"),
        (b"foob", "Zm9vYg=="),
        (b"fooba", "Zm9vYmE="),
        (b"foobar", "Zm9vYmFy"),
    ],
)
def test_base64_matches_the_rfc_4648_vectors_both_ways(
    ea: EaHarness, data: bytes, text: str
) -> None:
    assert ea.line("base64-encode", data.hex()) == text
    assert ea.line("base64-decode", utf16_hex(text)) == data.hex()


@pytest.mark.parametrize(
    "text", ["Zg=", "Zg===", "Z===", "====", "Zm9v!A==", "Zg==Zg==", "Zm 9v", "Zm9v\n", "Zm9vYg=a"]
)
def test_base64_that_is_not_strictly_rfc_4648_decodes_to_nothing(ea: EaHarness, text: str) -> None:
    assert ea.line("base64-decode", utf16_hex(text)) == "invalid"


def test_signing_reproduces_the_standard_webhooks_vector(ea: EaHarness) -> None:
    signature = ea.line("sign", SPEC_SECRET, SPEC_ID, str(SPEC_TIMESTAMP), SPEC_PAYLOAD.hex())
    assert signature == SPEC_SIGNATURE


@pytest.mark.parametrize(
    "secret",
    [SPEC_SECRET, SPEC_SECRET.removeprefix("whsec_"), f"  {SPEC_SECRET}\r\n", f"\t{SPEC_SECRET} "],
)
def test_a_pasted_secret_decodes_to_the_key_ingest_verifies_with(
    ea: EaHarness, secret: str
) -> None:
    assert ea.line("secret", utf16_hex(secret)) == f"key {decode_secret(SPEC_SECRET).hex()}"


@pytest.mark.parametrize(
    "secret", ["", "whsec_", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw!", "whsec_abc", "whsec_äöü="]
)
def test_a_mistyped_secret_is_refused_with_a_reason_that_never_quotes_it(
    ea: EaHarness, secret: str
) -> None:
    answer = ea.line("secret", utf16_hex(secret))
    assert answer.startswith("refused the secret is")
    assert "whsec_..." in answer
    body = secret.removeprefix("whsec_")
    assert not body or body not in answer


@settings(max_examples=40, deadline=None)
@given(
    key=st.binary(min_size=1, max_size=100),
    webhook_id=st.from_regex(
        r"mt5-[0-9]{1,12}-[0-9]{1,12}-[0-9]{1,12}-[0-9]{1,3}-[0-9a-f]{16}", fullmatch=True
    ),
    timestamp=st.integers(min_value=0, max_value=10**11),
    body=st.binary(max_size=600),
)
def test_whatever_the_ea_signs_ingest_verifies(
    ea: EaHarness, key: bytes, webhook_id: str, timestamp: int, body: bytes
) -> None:
    secret = "whsec_" + base64.b64encode(key).decode()
    signature = ea.line("sign", secret, webhook_id, str(timestamp), body.hex())
    delivery = parse_headers(
        {
            "webhook-id": webhook_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": signature,
        }
    )
    verify(delivery, body, [key])
