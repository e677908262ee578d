"""Who is asking, decided from a Supabase access token alone: a token verifies only with the key
of its own algorithm's kind, for the audience `authenticated`, in its time, naming a user by
UUID in the signed-in role; every other token is refused, whatever about it is wrong."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization

from services.api.errors import InvalidToken
from services.api.tokens import Caller, TokenPolicy, TokenVerifier, caller_from, mint_token
from tests.support.api import JWT_SECRET, SigningKey, b64url, claims, hs256

USER = uuid.uuid4()
ES = SigningKey("ES256")
RS = SigningKey("RS256")
PUBLISHED = {ES.kid: ES, RS.kid: RS}
ALL = frozenset({"HS256", "ES256", "RS256"})


async def _published(kid: str, algorithm: str) -> Any | None:
    key = PUBLISHED.get(kid)
    return key.private.public_key() if key is not None and key.algorithm == algorithm else None


def verifier(algorithms: frozenset[str] = ALL, **policy: Any) -> TokenVerifier:
    return TokenVerifier(
        TokenPolicy(algorithms=algorithms, **policy),
        secret=JWT_SECRET.encode(),
        public_key_for=_published,
    )


async def refused(token: str, **policy: Any) -> str:
    with pytest.raises(InvalidToken) as caught:
        await verifier(**policy).verify(token)
    return caught.value.reason


def _unsigned(header: dict[str, Any], payload: dict[str, Any], signature: bytes = b"") -> str:
    return ".".join(
        [
            b64url(json.dumps(header).encode()),
            b64url(json.dumps(payload).encode()),
            b64url(signature),
        ]
    )


@pytest.mark.parametrize(
    "token", [hs256(USER), ES.sign(USER), RS.sign(USER)], ids=["HS256", "ES256", "RS256"]
)
async def test_a_token_of_each_algorithm_names_its_user(token: str) -> None:
    caller = await verifier().verify(token)
    assert caller.user_id == USER
    assert json.loads(caller.claims_json)["sub"] == str(USER)


async def test_the_caller_knows_when_the_token_expires() -> None:
    exp = int(time.time()) + 600
    caller = await verifier().verify(hs256(USER, exp=exp))
    assert caller.expires_at == datetime.fromtimestamp(exp, UTC)


async def test_expired() -> None:
    assert await refused(hs256(USER, exp=int(time.time()) - 120)) == "expired"


async def test_expiry_within_the_leeway_still_verifies() -> None:
    token = hs256(USER, exp=int(time.time()) - 5)
    assert (await verifier(leeway_seconds=60).verify(token)).user_id == USER
    assert await refused(token, leeway_seconds=0) == "expired"


async def test_not_yet_valid() -> None:
    assert await refused(hs256(USER, nbf=int(time.time()) + 600)) == "not_yet_valid"


async def test_issued_in_the_future() -> None:
    assert await refused(hs256(USER, iat=int(time.time()) + 600)) == "not_yet_valid"


async def test_without_an_expiry() -> None:
    assert await refused(hs256(USER, exp=None)) == "missing_claim"


async def test_wrong_audience() -> None:
    assert await refused(hs256(USER, aud="anon")) == "audience"


async def test_without_an_audience() -> None:
    assert await refused(hs256(USER, aud=None)) == "missing_claim"


async def test_wrong_issuer_when_one_is_required() -> None:
    issuer = "https://project.supabase.co/auth/v1"
    assert await refused(hs256(USER, iss="https://other.supabase.co/auth/v1"), issuer=issuer) == (
        "issuer"
    )
    assert await refused(hs256(USER), issuer=issuer) == "missing_claim"
    assert (await verifier(issuer=issuer).verify(hs256(USER, iss=issuer))).user_id == USER


async def test_signed_with_another_secret() -> None:
    assert await refused(hs256(USER, secret="another-secret-" + "y" * 32)) == "signature"


async def test_signed_with_another_key_under_a_published_kid() -> None:
    impostor = SigningKey("ES256", kid=ES.kid)
    assert await refused(impostor.sign(USER)) == "signature"


async def test_a_kid_nobody_published() -> None:
    assert await refused(SigningKey("ES256").sign(USER)) == "unknown_key"


async def test_an_asymmetric_token_without_a_kid() -> None:
    token = jwt.encode(claims(USER), ES.private, algorithm="ES256")
    assert await refused(token) == "no_kid"


async def test_alg_none() -> None:
    token = _unsigned({"alg": "none", "typ": "JWT"}, claims(USER))
    assert await refused(token) == "algorithm_not_allowed"


@pytest.mark.parametrize("alg", ["HS384", "HS512", "ES384", "PS256", "EdDSA", "NONE", ""])
async def test_an_algorithm_not_configured(alg: str) -> None:
    token = _unsigned({"alg": alg, "kid": ES.kid}, claims(USER), b"x" * 32)
    assert await refused(token) == "algorithm_not_allowed"


async def test_hs256_is_refused_where_only_asymmetric_keys_are_configured() -> None:
    assert await refused(hs256(USER), algorithms=frozenset({"ES256", "RS256"})) == (
        "algorithm_not_allowed"
    )


@pytest.mark.parametrize("key", [ES, RS], ids=["ES256 key", "RS256 key"])
async def test_hs256_signed_with_a_published_public_key_is_refused(key: SigningKey) -> None:
    """Algorithm confusion: HMAC keyed with the public key's PEM (or its JWK), which anyone can
    read, and the published kid. HS256 only ever verifies with the project's secret."""
    pem = key.private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    for mac_key in (pem, json.dumps(key.jwk).encode()):
        header = b64url(json.dumps({"alg": "HS256", "typ": "JWT", "kid": key.kid}).encode())
        payload = b64url(json.dumps(claims(USER)).encode())
        mac = hmac.new(mac_key, f"{header}.{payload}".encode(), hashlib.sha256).digest()
        assert await refused(f"{header}.{payload}.{b64url(mac)}") == "signature"


async def test_an_es256_header_on_an_rs256_key_is_refused() -> None:
    token = jwt.encode(claims(USER), RS.private, algorithm="RS256", headers={"kid": RS.kid})
    _, payload, signature = token.split(".")
    swapped = b64url(json.dumps({"alg": "ES256", "kid": RS.kid, "typ": "JWT"}).encode())
    assert await refused(f"{swapped}.{payload}.{signature}") == "unknown_key"


@pytest.mark.parametrize("token", [hs256(USER), ES.sign(USER)], ids=["HS256", "ES256"])
async def test_a_tampered_payload(token: str) -> None:
    header, _, signature = token.split(".")
    forged = b64url(json.dumps(claims(uuid.uuid4())).encode())
    assert await refused(f"{header}.{forged}.{signature}") == "signature"


async def test_without_a_sub() -> None:
    assert await refused(hs256(USER, sub=None)) == "missing_claim"


@pytest.mark.parametrize(
    "sub",
    [
        "not-a-uuid",
        "",
        USER.hex,
        str(USER).upper(),
        f"{{{USER}}}",
        f"urn:uuid:{USER}",
        " " + str(USER),
    ],
    ids=["not-a-uuid", "empty", "hex", "upper-case", "braced", "urn", "leading-space"],
)
async def test_a_sub_that_is_not_a_uuid_as_supabase_writes_it(sub: str) -> None:
    assert await refused(hs256(USER, sub=sub)) == "sub"


async def test_a_sub_that_is_not_text() -> None:
    assert await refused(hs256(USER, sub=12345)) in {"sub", "invalid"}


@pytest.mark.parametrize("role", ["anon", "service_role", "postgres", "Authenticated"])
async def test_a_role_other_than_authenticated(role: str) -> None:
    assert await refused(hs256(USER, role=role)) == "role"


async def test_without_a_role() -> None:
    assert await refused(hs256(USER, role=None)) == "missing_claim"


@pytest.mark.parametrize(
    "token",
    ["", "x", "a.b", "a.b.c", "..", "e30.e30.", "\u00e9.\u00e9.\u00e9", "Bearer x.y.z"],
)
async def test_garbage(token: str) -> None:
    assert await refused(token) in {"malformed", "algorithm_not_allowed", "invalid"}


async def test_an_oversized_token_is_not_parsed() -> None:
    assert await refused("e" * 9000) == "too_large"


def test_an_expiry_no_calendar_holds_is_refused() -> None:
    for exp in (1e300, 10**30, -5, True):
        with pytest.raises(InvalidToken):
            caller_from({"sub": str(USER), "role": "authenticated", "exp": exp})


def test_claims_the_database_cannot_be_handed_do_not_verify() -> None:
    with pytest.raises(InvalidToken):
        caller_from({"sub": str(USER), "role": "authenticated", "exp": 2e9, "x": float("nan")})


async def test_a_minted_token_verifies_as_a_supabase_one() -> None:
    token = mint_token(JWT_SECRET, USER, now=datetime.now(UTC), lifetime=timedelta(minutes=5))
    caller = await verifier().verify(token)
    assert isinstance(caller, Caller) and caller.user_id == USER
    assert json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "==")) | {} == json.loads(
        caller.claims_json
    )
