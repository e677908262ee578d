"""The app API in-process on the session's Postgres, access tokens signed as Supabase signs them,
and a JWKS served over real HTTP: for the API's specifications."""

from __future__ import annotations

import base64
import contextlib
import json
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import httpx
import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from services.api.app import create_app
from services.api.bootstrap import ApiWiring, wire
from services.api.jwks import JwksKeys
from services.api.settings import ApiSettings
from services.api.wizard_verification import Wizard
from tests.support.served_app import ServedApp

JWT_SECRET = "test-jwt-secret-" + "x" * 32


def api_settings(database_url: str, **overrides: Any) -> ApiSettings:
    values: dict[str, Any] = {"database_url": database_url, "jwt_secret": JWT_SECRET}
    return ApiSettings(**(values | overrides))


class FakeClock:
    """A monotonic clock a spec moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def claims(user_id: uuid.UUID, **overrides: Any) -> dict[str, Any]:
    """An access token's claims as Supabase Auth writes them, valid for an hour from now."""
    now = int(time.time())
    values: dict[str, Any] = {
        "aud": "authenticated",
        "sub": str(user_id),
        "role": "authenticated",
        "iat": now,
        "exp": now + 3600,
        "email": "trader@poscal.test",
        "aal": "aal1",
        "session_id": str(uuid.uuid4()),
        "is_anonymous": False,
    }
    return {k: v for k, v in (values | overrides).items() if v is not None}


def hs256(user_id: uuid.UUID, secret: str = JWT_SECRET, **overrides: Any) -> str:
    return jwt.encode(claims(user_id, **overrides), secret, algorithm="HS256")


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@dataclass
class SigningKey:
    """An asymmetric key pair as a Supabase project holds it: signs tokens, publishes its JWK."""

    algorithm: str
    kid: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    private: Any = None

    def __post_init__(self) -> None:
        if self.private is None:
            self.private = (
                ec.generate_private_key(ec.SECP256R1())
                if self.algorithm == "ES256"
                else rsa.generate_private_key(public_exponent=65537, key_size=2048)
            )

    def sign(self, user_id: uuid.UUID, **overrides: Any) -> str:
        return jwt.encode(
            claims(user_id, **overrides),
            self.private,
            algorithm=self.algorithm,
            headers={"kid": self.kid},
        )

    @property
    def jwk(self) -> dict[str, Any]:
        algorithm = jwt.get_algorithm_by_name(self.algorithm)
        public: dict[str, Any] = json.loads(algorithm.to_jwk(self.private.public_key()))
        return public | {"kid": self.kid, "alg": self.algorithm, "use": "sig"}


class JwksServer:
    """A project's JWKS endpoint over real HTTP: the keys it publishes can change, and it counts
    how often it was asked."""

    def __init__(self, *keys: SigningKey) -> None:
        self.keys = list(keys)
        self._lock = threading.Lock()
        self._requests = 0
        self._served = ServedApp(Starlette(routes=[Route("/jwks.json", self._jwks)]))

    async def _jwks(self, _: Request) -> Response:
        with self._lock:
            self._requests += 1
        return JSONResponse({"keys": [key.jwk for key in self.keys]})

    @property
    def requests(self) -> int:
        with self._lock:
            return self._requests

    @property
    def url(self) -> str:
        return f"{self._served.url}/jwks.json"

    def __enter__(self) -> JwksServer:
        self._served.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._served.stop()


@dataclass
class RunningApi:
    client: httpx.AsyncClient
    wiring: ApiWiring


@contextlib.asynccontextmanager
async def running_api(
    settings: ApiSettings,
    pool: asyncpg.Pool,
    *,
    clock: Callable[[], float] = time.monotonic,
    client_address: tuple[str, int] = ("203.0.113.7", 40000),
    headers: Mapping[str, str] | None = None,
    wizard: Wizard | None = None,
) -> AsyncIterator[RunningApi]:
    """The app on `pool`, its JWKS (when configured) fetched once before the first request;
    `wizard` instead of the one its settings make (fakes for the cloud terminal service)."""
    built: list[ApiWiring] = []
    http = httpx.AsyncClient(timeout=5)

    async def build(_: contextlib.AsyncExitStack) -> ApiWiring:
        jwks = None
        if settings.jwks_url:
            jwks = JwksKeys(
                settings.jwks_url,
                http,
                settings.algorithms,
                min_refresh_seconds=settings.jwks_min_refresh_seconds,
                max_age_seconds=settings.jwks_max_age_seconds,
                clock=clock,
            )
            assert await jwks.refresh(force=True), "the JWKS did not answer"
        built.append(wire(settings, pool, jwks, http=http, clock=clock, wizard=wizard))
        return built[0]

    app = create_app(settings, build)
    transport = httpx.ASGITransport(app=app, client=client_address)
    async with (
        http,
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=transport, base_url="http://api", headers=dict(headers or {})
        ) as client,
    ):
        yield RunningApi(client, built[0])


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")
