"""Supabase access tokens: verified into the caller they name (who is asking), and minted from
the project's JWT secret for development (`poscal-sync api token`)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt

from services.api.errors import InvalidToken
from services.api.settings import ASYMMETRIC, SYMMETRIC

AUDIENCE = "authenticated"
ROLE = "authenticated"
# A header bigger than any token Supabase issues is refused before it is parsed.
MAX_TOKEN_BYTES = 8192
# The latest expiry a datetime can hold; a token claiming later is refused, not trusted forever.
_LATEST = datetime(9999, 1, 1, tzinfo=UTC).timestamp()

# The key verifying an asymmetric token: (kid, algorithm) -> a public key, or None when there is
# none of that kid for that algorithm (jwks.py).
PublicKeyFor = Callable[[str, str], Awaitable[Any | None]]


@dataclass(frozen=True)
class Caller:
    """Who is asking: the verified token's user, when it expires, and its claims as the JSON
    the database is handed (`request.jwt.claims`, which row-level security reads)."""

    user_id: uuid.UUID
    expires_at: datetime
    claims_json: str = field(repr=False)


@dataclass(frozen=True)
class TokenPolicy:
    """What a token must be. Only `algorithms` are accepted, each with the key of its own kind:
    HS256 only with the project's secret, ES256 and RS256 only with a JWKS key of that kind, so
    no token can pick its own verification (`none`, or HS256 keyed with a public key)."""

    algorithms: frozenset[str]
    audience: str = AUDIENCE
    issuer: str | None = None
    leeway_seconds: int = 30


async def _no_public_keys(_kid: str, _algorithm: str) -> Any | None:
    return None


class TokenVerifier:
    def __init__(
        self,
        policy: TokenPolicy,
        secret: bytes | None = None,
        public_key_for: PublicKeyFor = _no_public_keys,
    ) -> None:
        self._policy = policy
        self._secret = secret
        self._public_key_for = public_key_for

    async def verify(self, token: str) -> Caller:
        """The caller the token names; InvalidToken (with a reason for logs only) otherwise."""
        if len(token) > MAX_TOKEN_BYTES:
            raise InvalidToken("too_large")
        algorithm, kid = _header(token)
        if algorithm not in self._policy.algorithms:
            raise InvalidToken("algorithm_not_allowed")
        key: Any
        if algorithm == SYMMETRIC:
            if self._secret is None:
                raise InvalidToken("algorithm_not_allowed")
            key = self._secret
        elif algorithm in ASYMMETRIC:
            if kid is None:
                raise InvalidToken("no_kid")
            key = await self._public_key_for(kid, algorithm)
            if key is None:
                raise InvalidToken("unknown_key")
        else:
            raise InvalidToken("algorithm_not_allowed")
        return caller_from(_decode(token, key, algorithm, self._policy))


def _header(token: str) -> tuple[str | None, str | None]:
    try:
        header = jwt.get_unverified_header(token)
    except (jwt.PyJWTError, ValueError, TypeError):
        raise InvalidToken("malformed") from None
    algorithm, kid = header.get("alg"), header.get("kid")
    return (
        algorithm if isinstance(algorithm, str) else None,
        kid if isinstance(kid, str) else None,
    )


def _decode(token: str, key: Any, algorithm: str, policy: TokenPolicy) -> dict[str, Any]:
    try:
        payload: dict[str, Any] = jwt.decode(
            token,
            key,
            algorithms=[algorithm],
            audience=policy.audience,
            issuer=policy.issuer,
            leeway=policy.leeway_seconds,
            options={
                "require": ["exp", "sub", "aud", "role"] + (["iss"] if policy.issuer else []),
                "verify_signature": True,
                "verify_exp": True,
                "verify_nbf": True,
                "verify_iat": True,
                "verify_aud": True,
                "verify_iss": policy.issuer is not None,
            },
        )
    except jwt.ExpiredSignatureError:
        raise InvalidToken("expired") from None
    except jwt.ImmatureSignatureError:
        raise InvalidToken("not_yet_valid") from None
    except jwt.InvalidAudienceError:
        raise InvalidToken("audience") from None
    except jwt.InvalidIssuerError:
        raise InvalidToken("issuer") from None
    except jwt.InvalidSignatureError:
        raise InvalidToken("signature") from None
    except jwt.MissingRequiredClaimError:
        raise InvalidToken("missing_claim") from None
    # Any other refusal of the library, and values it cannot compare (an infinite `iat`).
    except (jwt.PyJWTError, ValueError, TypeError, OverflowError):
        raise InvalidToken("invalid") from None
    return payload


def caller_from(payload: Mapping[str, Any]) -> Caller:
    """The claims PosCal itself relies on, checked: `sub` a UUID as Supabase writes it, `role`
    the signed-in role, an expiry a calendar can hold."""
    sub = payload.get("sub")
    try:
        user_id = uuid.UUID(sub) if isinstance(sub, str) else None
    except ValueError:
        user_id = None
    if user_id is None or str(user_id) != sub:
        raise InvalidToken("sub")
    if payload.get("role") != ROLE:
        raise InvalidToken("role")
    exp = payload.get("exp")
    if not isinstance(exp, int | float) or isinstance(exp, bool) or not 0 < exp < _LATEST:
        raise InvalidToken("exp")
    try:
        claims_json = json.dumps(payload, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError):
        raise InvalidToken("claims") from None
    return Caller(user_id, datetime.fromtimestamp(exp, UTC), claims_json)


def mint_token(
    secret: str,
    user_id: uuid.UUID,
    *,
    now: datetime,
    lifetime: timedelta = timedelta(hours=1),
    issuer: str | None = None,
) -> str:
    """An HS256 access token shaped as Supabase Auth issues them, for development and tests."""
    claims: dict[str, Any] = {
        "aud": AUDIENCE,
        "sub": str(user_id),
        "role": ROLE,
        "iat": int(now.timestamp()),
        "exp": int((now + lifetime).timestamp()),
        "aal": "aal1",
        "amr": [{"method": "password", "timestamp": int(now.timestamp())}],
        "session_id": str(uuid.uuid4()),
        "is_anonymous": False,
    }
    if issuer is not None:
        claims["iss"] = issuer
    return jwt.encode(claims, secret, algorithm=SYMMETRIC)
