"""Standard Webhooks signatures, pure: parse the three headers, check the time, verify, sign."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

SECRET_PREFIX = "whsec_"  # noqa: S105 - the public prefix of every secret
PUBLIC_KEY_PREFIX = "whpk_"
_MAX_ID_LENGTH = 256
_MAX_SIGNATURES = 10


class SignatureRejected(Exception):
    """Verification failed. `code` is for audit only; clients are told nothing more specific."""

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


@dataclass(frozen=True)
class SignedDelivery:
    """The three Standard Webhooks headers, parsed and well-formed."""

    webhook_id: str
    timestamp: int
    signatures: tuple[tuple[str, str], ...]


def parse_headers(headers: Mapping[str, str]) -> SignedDelivery:
    webhook_id = headers.get("webhook-id", "")
    raw_timestamp = headers.get("webhook-timestamp", "")
    raw_signature = headers.get("webhook-signature", "")
    if not webhook_id or not raw_timestamp or not raw_signature:
        raise SignatureRejected("missing_header")
    if len(webhook_id) > _MAX_ID_LENGTH or not webhook_id.isprintable():
        raise SignatureRejected("malformed_id")
    if not raw_timestamp.isascii() or not raw_timestamp.isdigit() or len(raw_timestamp) > 12:
        raise SignatureRejected("malformed_timestamp")
    signatures = []
    for entry in raw_signature.split(" ")[:_MAX_SIGNATURES]:
        version, sep, value = entry.partition(",")
        if sep and version and value:
            signatures.append((version, value))
    if not signatures:
        raise SignatureRejected("malformed_signature")
    return SignedDelivery(webhook_id, int(raw_timestamp), tuple(signatures))


def check_timestamp(timestamp: int, now: float, tolerance_seconds: int) -> None:
    """Refuse deliveries signed too long ago or too far in the future."""
    if timestamp < now - tolerance_seconds:
        raise SignatureRejected("timestamp_too_old")
    if timestamp > now + tolerance_seconds:
        raise SignatureRejected("timestamp_in_future")


def _signed_content(webhook_id: str, timestamp: int, body: bytes) -> bytes:
    return f"{webhook_id}.{timestamp}.".encode() + body


@dataclass(frozen=True)
class VerificationKeys:
    """What a connection's deliveries may be signed with: HMAC secrets and ed25519 public keys."""

    secrets: Sequence[bytes] = ()
    public_keys: Sequence[bytes] = field(default=())

    def __repr__(self) -> str:  # never print keys
        return f"VerificationKeys({len(self.secrets)} secrets, {len(self.public_keys)} public)"


def sign(key: bytes, webhook_id: str, timestamp: int, body: bytes) -> str:
    digest = hmac.new(key, _signed_content(webhook_id, timestamp, body), hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


def sign_v1a(private_key: Ed25519PrivateKey, webhook_id: str, timestamp: int, body: bytes) -> str:
    signature = private_key.sign(_signed_content(webhook_id, timestamp, body))
    return "v1a," + base64.b64encode(signature).decode("ascii")


def _decoded(value: str) -> bytes | None:
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return None


def _matches_v1a(public_keys: Sequence[bytes], content: bytes, signature: bytes) -> bool:
    matched = False
    for raw in public_keys:
        try:
            Ed25519PublicKey.from_public_bytes(raw).verify(signature, content)
        except (InvalidSignature, ValueError):
            continue
        matched = True
    return matched


def verify(delivery: SignedDelivery, body: bytes, keys: VerificationKeys | Sequence[bytes]) -> None:
    """Pass silently when any signature matches any active key of its version; otherwise raise.

    Signed content is `{webhook-id}.{webhook-timestamp}.{raw body}`; `webhook-signature` holds
    one or more space-separated entries: `v1,<base64 HMAC-SHA256>` (symmetric, `whsec_` secrets)
    or `v1a,<base64 ed25519 signature>` (asymmetric, `whpk_` public keys). Any entry matching any
    active key verifies, so keys can rotate without downtime.
    """
    if not isinstance(keys, VerificationKeys):
        keys = VerificationKeys(secrets=tuple(keys))
    content = _signed_content(delivery.webhook_id, delivery.timestamp, body)
    expected = [hmac.new(key, content, hashlib.sha256).digest() for key in keys.secrets]
    matched = False
    for version, value in delivery.signatures:
        if version not in ("v1", "v1a"):
            continue
        given = _decoded(value)
        if given is None:
            continue
        if version == "v1a":
            matched |= len(given) == 64 and _matches_v1a(keys.public_keys, content, given)
            continue
        # Compare against every key without stopping early: timing says nothing about which.
        for digest in expected:
            matched |= hmac.compare_digest(given, digest)
    if not matched:
        raise SignatureRejected("signature_mismatch")


def decode_secret(secret: str) -> bytes:
    """The HMAC key inside a `whsec_...` secret (the prefix is optional, as the spec allows)."""
    encoded = secret.removeprefix(SECRET_PREFIX)
    try:
        key = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):  # ValueError: non-ASCII text
        raise ValueError("not a valid webhook secret") from None
    if not key:
        # An HMAC under an empty key is forgeable by anyone.
        raise ValueError("not a valid webhook secret: it is empty")
    return key


def encode_secret(key: bytes) -> str:
    return SECRET_PREFIX + base64.b64encode(key).decode("ascii")


def decode_public_key(public_key: str) -> bytes:
    """The raw ed25519 public key inside a `whpk_...` key (the prefix is optional)."""
    raw = _decoded(public_key.strip().removeprefix(PUBLIC_KEY_PREFIX))
    if raw is None or len(raw) != 32:
        raise ValueError("not a valid webhook public key: expected whpk_ + base64 of 32 bytes")
    try:
        Ed25519PublicKey.from_public_bytes(raw)
    except ValueError:
        raise ValueError("not a valid webhook public key: not an ed25519 key") from None
    return raw


def encode_public_key(raw: bytes) -> str:
    return PUBLIC_KEY_PREFIX + base64.b64encode(raw).decode("ascii")
