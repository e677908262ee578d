"""Who is asking, over HTTP against the real app: a Supabase token verifies (HS256 with the
secret, ES256 and RS256 through a JWKS served over real HTTP, rotated keys fetched, made-up kids
unable to make us hammer the JWKS), anything else is 401 with the bearer challenge and nothing
more, an address that keeps failing is slowed, and no token reaches a log or a span."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Iterator

import asyncpg
import httpx
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from structlog.testing import capture_logs

from tests.support.api import (
    JWT_SECRET,
    FakeClock,
    JwksServer,
    SigningKey,
    api_settings,
    b64url,
    bearer,
    claims,
    hs256,
    running_api,
)

pytestmark = pytest.mark.integration

USER = uuid.uuid4()
CHALLENGE = 'Bearer realm="poscal"'
INVALID = 'Bearer realm="poscal", error="invalid_token"'
ES, RS = SigningKey("ES256"), SigningKey("RS256")


@pytest.fixture(scope="module")
def jwks() -> Iterator[JwksServer]:
    with JwksServer(ES, RS) as server:
        yield server


def _none_token() -> str:
    header = b64url(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    return f"{header}.{b64url(json.dumps(claims(USER)).encode())}."


def _tampered() -> str:
    header, _, signature = hs256(USER).split(".")
    return f"{header}.{b64url(json.dumps(claims(uuid.uuid4())).encode())}.{signature}"


def _confused() -> str:
    """HS256 keyed with the published ES256 key's JWK text, under its kid."""
    header = b64url(json.dumps({"alg": "HS256", "kid": ES.kid}).encode())
    payload = b64url(json.dumps(claims(USER)).encode())
    mac = hmac.new(json.dumps(ES.jwk).encode(), f"{header}.{payload}".encode(), hashlib.sha256)
    return f"{header}.{payload}.{b64url(mac.digest())}"


NOW = int(time.time())
REFUSED_TOKENS = {
    "expired": hs256(USER, exp=NOW - 3600),
    "not yet valid": hs256(USER, nbf=NOW + 3600),
    "wrong audience": hs256(USER, aud="anon"),
    "wrong issuer": hs256(USER, iss="https://elsewhere.example/auth/v1"),
    "wrong key": hs256(USER, secret="someone-else's-secret-" + "z" * 32),
    "alg none": _none_token(),
    "HS256 with the public key": _confused(),
    "tampered payload": _tampered(),
    "missing sub": hs256(USER, sub=None),
    "non-UUID sub": hs256(USER, sub="admin"),
    "role anon": hs256(USER, role="anon"),
    "unpublished ES256 key": SigningKey("ES256").sign(USER),
    "garbage": "not.a.token",
}
ISSUER = "https://project.supabase.co/auth/v1"


@pytest.mark.parametrize("name", REFUSED_TOKENS)
async def test_every_bad_token_is_401_with_the_invalid_token_challenge_and_nothing_more(
    name: str, pool: asyncpg.Pool, database_url: str, jwks: JwksServer
) -> None:
    token = REFUSED_TOKENS[name]
    settings = api_settings(
        database_url,
        jwks_url=jwks.url,
        jwt_algorithms="HS256,ES256,RS256",
        jwt_issuer=ISSUER if name == "wrong issuer" else None,
        auth_failures_per_client="1000/minute",
    )
    async with running_api(settings, pool) as api:
        response = await api.client.get("/v1/me", headers=bearer(token))
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == INVALID
    assert response.json() == {
        "error": "invalid_token",
        "detail": "the access token is invalid or expired; sign in again",
    }


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Basic dXNlcjpwYXNz"}, {"Authorization": "Token abc"}],
    ids=["no header", "basic", "another scheme"],
)
async def test_no_bearer_token_is_401_with_the_plain_challenge(
    headers: dict[str, str], pool: asyncpg.Pool, database_url: str
) -> None:
    async with running_api(api_settings(database_url), pool) as api:
        response = await api.client.get("/v1/me", headers=headers)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == CHALLENGE
    assert response.json()["error"] == "unauthenticated"


async def test_an_hs256_token_gets_its_user_and_its_expiry(
    pool: asyncpg.Pool, database_url: str
) -> None:
    exp = int(time.time()) + 900
    async with running_api(api_settings(database_url), pool) as api:
        response = await api.client.get("/v1/me", headers=bearer(hs256(USER, exp=exp)))
    assert response.status_code == 200
    assert response.json()["user_id"] == str(USER)
    assert response.json()["token_expires_at"].startswith(
        time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(exp))
    )


@pytest.mark.parametrize("key", [ES, RS], ids=["ES256", "RS256"])
async def test_asymmetric_tokens_verify_with_the_key_the_jwks_publishes(
    key: SigningKey, pool: asyncpg.Pool, database_url: str, jwks: JwksServer
) -> None:
    settings = api_settings(database_url, jwt_secret=None, jwks_url=jwks.url)
    async with running_api(settings, pool) as api:
        response = await api.client.get("/v1/me", headers=bearer(key.sign(USER)))
        hs = await api.client.get("/v1/me", headers=bearer(hs256(USER)))
    assert (response.status_code, response.json()["user_id"]) == (200, str(USER))
    assert hs.status_code == 401  # no secret configured: HS256 is not an algorithm it takes


async def test_a_key_rotated_in_is_fetched_when_its_kid_first_arrives(
    pool: asyncpg.Pool, database_url: str
) -> None:
    old, new = SigningKey("ES256"), SigningKey("ES256")
    clock = FakeClock()
    with JwksServer(old) as jwks:
        settings = api_settings(database_url, jwt_secret=None, jwks_url=jwks.url)
        async with running_api(settings, pool, clock=clock) as api:
            assert (
                await api.client.get("/v1/me", headers=bearer(old.sign(USER)))
            ).status_code == 200
            jwks.keys.append(new)  # the project rotates: the new key signs from now on
            clock.now += settings.jwks_min_refresh_seconds
            rotated = await api.client.get("/v1/me", headers=bearer(new.sign(USER)))
    assert rotated.status_code == 200
    assert jwks.requests == 2


async def test_a_stream_of_made_up_kids_fetches_the_jwks_once_per_interval(
    pool: asyncpg.Pool, database_url: str
) -> None:
    clock = FakeClock()
    with JwksServer(ES) as jwks:
        settings = api_settings(
            database_url,
            jwt_secret=None,
            jwks_url=jwks.url,
            auth_failures_per_client="100000/minute",
        )
        async with running_api(settings, pool, clock=clock) as api:
            clock.now += settings.jwks_min_refresh_seconds  # the first unknown kid may refetch
            for _ in range(50):
                spam = SigningKey("ES256").sign(USER)
                assert (await api.client.get("/v1/me", headers=bearer(spam))).status_code == 401
            after_spam = jwks.requests
            good = await api.client.get("/v1/me", headers=bearer(ES.sign(USER)))
    assert after_spam == 2  # the start-up fetch, then one for the whole stream
    assert good.status_code == 200


async def test_an_address_that_keeps_failing_gets_429_but_a_valid_token_from_it_does_not(
    pool: asyncpg.Pool, database_url: str
) -> None:
    settings = api_settings(database_url, auth_failures_per_client="3/hour")
    async with running_api(settings, pool) as api:
        failures = [
            (await api.client.get("/v1/me", headers=bearer("junk"))).status_code for _ in range(5)
        ]
        throttled = await api.client.get("/v1/me")
        valid = await api.client.get("/v1/me", headers=bearer(hs256(USER)))
    assert failures == [401, 401, 401, 429, 429]
    assert throttled.status_code == 429
    assert 1 <= int(throttled.headers["retry-after"]) <= 3600
    assert throttled.json()["error"] == "rate_limited"
    assert valid.status_code == 200


async def test_a_trusted_proxy_s_forwarded_address_is_the_one_throttled(
    pool: asyncpg.Pool, database_url: str
) -> None:
    settings = api_settings(
        database_url, auth_failures_per_client="1/hour", trusted_proxies="203.0.113.0/24"
    )
    async with running_api(settings, pool) as api:

        async def from_client(address: str) -> int:
            headers = {"X-Forwarded-For": address, "Authorization": "Bearer junk"}
            return (await api.client.get("/v1/me", headers=headers)).status_code

        first = [await from_client("198.51.100.1"), await from_client("198.51.100.1")]
        other = await from_client("198.51.100.2")
    assert first == [401, 429]
    assert other == 401


async def test_no_token_reaches_a_log_or_a_span_and_no_query_string_a_span(
    pool: asyncpg.Pool, database_url: str, spans: InMemorySpanExporter
) -> None:
    good, bad = hs256(USER), hs256(USER, secret="wrong-" + "k" * 40)
    spans.clear()
    with capture_logs() as logs:
        async with running_api(api_settings(database_url), pool) as api:
            await api.client.get("/v1/me?access_token=" + good, headers=bearer(good))
            await api.client.get("/v1/me", headers=bearer(bad))
            await api.client.get("/v1/connections?secret=s3cr3t", headers=bearer(good))
    recorded = json.dumps(logs, default=str) + json.dumps(
        [dict(span.attributes or {}) | {"name": span.name} for span in spans.get_finished_spans()]
    )
    assert spans.get_finished_spans(), "the requests had no server spans"
    for secret in (good, bad, good.split(".")[2], bad.split(".")[2], JWT_SECRET, "s3cr3t"):
        assert secret not in recorded
    assert any(entry.get("reason") == "signature" for entry in logs)


async def test_two_authorization_headers_are_refused(pool: asyncpg.Pool, database_url: str) -> None:
    async with running_api(api_settings(database_url), pool) as api:
        response = await api.client.get(
            "/v1/me",
            headers=httpx.Headers(
                [("authorization", f"Bearer {hs256(USER)}"), ("authorization", "Bearer x")]
            ),
        )
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == INVALID
