"""What an operator hands the connection commands, checked before anything is stored (pure);
errors say what is wrong with the input and never repeat it: it may be a secret."""

from __future__ import annotations

import base64
import binascii
import re
from datetime import timedelta

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from services.shared.brokers import InvalidCredential, UnknownBroker, broker

PUBLIC_KEY_PREFIX = "whpk_"
MAX_OVERLAP = timedelta(days=30)
MAX_CREDENTIAL_BYTES = 64 * 1024
_OVERLAP = re.compile(r"(\d{1,9})([smhd])")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}

# The torsion points of edwards25519, in canonical and non-canonical encodings (the same list as
# libsodium's). A signature under one of them is forgeable without a private key: under the
# identity, `R = identity, S = 0` verifies every message. Loading does not refuse them.
_SMALL_ORDER_POINTS = frozenset(
    bytes.fromhex(h)
    for h in (
        "0000000000000000000000000000000000000000000000000000000000000000",
        "0000000000000000000000000000000000000000000000000000000000000080",
        "0100000000000000000000000000000000000000000000000000000000000000",
        "0100000000000000000000000000000000000000000000000000000000000080",
        "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",
        "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc85",
        "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",
        "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa",
        "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
        "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
        "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
    )
)


class InvalidInput(ValueError):
    """The operator's input is refused; the message says why and never quotes a secret."""


def parse_overlap(text: str) -> timedelta:
    """`24h`, `30m`, `90s`, `2d` or `0`: how long replaced webhook secrets keep verifying."""
    text = text.strip()
    if text == "0":
        return timedelta(0)
    match = _OVERLAP.fullmatch(text)
    if match is None:
        raise InvalidInput(
            f"--overlap {text!r} is not a duration: use a whole number with s, m, h or d"
            " (e.g. 24h, 30m, 90s, 2d), or 0 to end the previous secrets now"
        )
    overlap = timedelta(**{_UNITS[match[2]]: int(match[1])})
    if overlap > MAX_OVERLAP:
        raise InvalidInput(f"--overlap {text} is longer than the {MAX_OVERLAP.days}d allowed")
    return overlap


def parse_broker_credential(broker_name: str, text: str) -> bytes:
    """The bytes to seal, in the form the broker's plug-in declares: for MT5 a JSON object of
    non-empty strings `login`, `password` and `server`, for IBKR `token` and `query_id` (stored
    in that canonical form); for token brokers (OANDA) the token, whitespace stripped."""
    if len(text.encode()) > MAX_CREDENTIAL_BYTES:
        raise InvalidInput(f"the credential on standard input is over {MAX_CREDENTIAL_BYTES} bytes")
    if not text.strip():
        raise InvalidInput("no credential on standard input: it was empty")
    try:
        return broker(broker_name).credentials.seal_form(broker_name, text)
    except (InvalidCredential, UnknownBroker) as exc:
        raise InvalidInput(str(exc)) from None


def parse_public_key(text: str) -> bytes:
    """The raw 32-byte Ed25519 key inside `whpk_<base64>` (Standard Webhooks `v1a`)."""
    text = text.strip()
    if not text.startswith(PUBLIC_KEY_PREFIX):
        raise InvalidInput(f"a webhook public key starts with {PUBLIC_KEY_PREFIX!r}")
    try:
        raw = base64.b64decode(text.removeprefix(PUBLIC_KEY_PREFIX), validate=True)
    except (binascii.Error, ValueError):  # ValueError: non-ASCII text
        raise InvalidInput("the webhook public key is not valid base64 after 'whpk_'") from None
    try:
        Ed25519PublicKey.from_public_bytes(raw)
    except ValueError:
        raise InvalidInput(
            f"the webhook public key is not an Ed25519 public key (32 bytes, got {len(raw)})"
        ) from None
    if raw in _SMALL_ORDER_POINTS:
        raise InvalidInput("the webhook public key is a small-order point: anyone could sign")
    return raw


def encode_public_key(raw: bytes) -> str:
    return PUBLIC_KEY_PREFIX + base64.b64encode(raw).decode("ascii")
