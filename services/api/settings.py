"""The app API's settings, from the environment (POSCAL_API_*, DATABASE_URL, the master key)."""

from __future__ import annotations

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator

from services.shared.client_ip import parse_networks
from services.shared.settings import (
    KeyedServiceSettings,
    metrics_host_setting,
    metrics_port_setting,
)
from services.shared.sync_limits import UserSyncLimit
from services.shared.token_buckets import TokenBuckets

# What Supabase signs access tokens with: HS256 with the project's JWT secret, or its asymmetric
# signing keys (ES256, RS256) published at its JWKS URL.
SYMMETRIC = "HS256"
ASYMMETRIC = ("ES256", "RS256")
# Shorter HMAC keys than this are guessable offline from one token.
MIN_SECRET_BYTES = 32


def _env(name: str) -> AliasChoices:
    return AliasChoices(name)


class ApiSettings(KeyedServiceSettings):
    host: str = Field("127.0.0.1", validation_alias=AliasChoices("POSCAL_API_HOST", "host"))
    port: int = Field(8090, validation_alias=AliasChoices("POSCAL_API_PORT", "port"))
    # Who is asking: Supabase access tokens. The secret verifies HS256 tokens; the JWKS URL
    # (`https://<project>.supabase.co/auth/v1/.well-known/jwks.json`) the asymmetric ones.
    jwt_secret: SecretStr | None = Field(None, validation_alias=_env("POSCAL_API_JWT_SECRET"))
    jwks_url: str | None = Field(None, validation_alias=_env("POSCAL_API_JWKS_URL"))
    # Comma-separated; by default HS256 when a secret is set, ES256 and RS256 when a JWKS URL is.
    jwt_algorithms: str = Field("", validation_alias=_env("POSCAL_API_JWT_ALGORITHMS"))
    # Checked when set (Supabase: `https://<project>.supabase.co/auth/v1`).
    jwt_issuer: str | None = Field(None, validation_alias=_env("POSCAL_API_JWT_ISSUER"))
    # Clock skew allowed on exp, nbf and iat.
    jwt_leeway_seconds: int = Field(
        30, ge=0, le=300, validation_alias=_env("POSCAL_API_JWT_LEEWAY_SECONDS")
    )
    # An unknown `kid` refetches the JWKS at most this often (a stream of made-up kids costs
    # one fetch per interval); known keys are refetched after `jwks_max_age_seconds`.
    jwks_min_refresh_seconds: float = Field(
        30.0, gt=0, validation_alias=_env("POSCAL_API_JWKS_MIN_REFRESH_SECONDS")
    )
    jwks_max_age_seconds: float = Field(
        600.0, gt=0, validation_alias=_env("POSCAL_API_JWKS_MAX_AGE_SECONDS")
    )
    # Exact origins (scheme://host[:port]) the browser may call from, comma-separated; none
    # by default, so no browser page can read an answer.
    cors_origins: str = Field("", validation_alias=_env("POSCAL_API_CORS_ORIGINS"))
    # Strict-Transport-Security max-age (0: not sent).
    hsts_seconds: int = Field(31_536_000, ge=0, validation_alias=_env("POSCAL_API_HSTS_SECONDS"))
    max_body_bytes: int = Field(
        64 * 1024, ge=1024, validation_alias=_env("POSCAL_API_MAX_BODY_BYTES")
    )
    # Per user and per replica, in request units: each route costs what it declares (1 for
    # most). `limits` syntax: "120/minute", "10/second;600/hour".
    rate_limit_per_user: str = Field(
        "120/minute;20/second", validation_alias=_env("POSCAL_API_RATE_LIMIT_PER_USER")
    )
    # Requests without a valid token from one client address (an IPv6 /64) answered 401
    # before its further failures get 429; a valid token is never refused by it.
    auth_failures_per_client: str = Field(
        "30/minute", validation_alias=_env("POSCAL_API_AUTH_FAILURES_PER_CLIENT")
    )
    # Proxies whose X-Forwarded-For is believed (addresses or CIDR networks).
    trusted_proxies: str = Field("", validation_alias=_env("POSCAL_API_TRUSTED_PROXIES"))
    # Every query of a request runs with this statement timeout, so no request holds a
    # connection long.
    statement_timeout_ms: int = Field(
        5000, ge=100, validation_alias=_env("POSCAL_API_STATEMENT_TIMEOUT_MS")
    )
    # The annual risk-free rate the analytics' Sharpe ratio is computed against (a fraction).
    risk_free_rate: float = Field(
        0.0, ge=-1, le=1, validation_alias=_env("POSCAL_API_RISK_FREE_RATE")
    )
    database_pool_size: int = Field(
        10, ge=1, validation_alias=_env("POSCAL_API_DATABASE_POOL_SIZE")
    )
    # The connection wizard (POST /v1/wizard/sessions) seals what it verified with the vault's
    # keys (POSCAL_MASTER_KEY, or POSCAL_KEK_PROVIDER): without them it answers 503.
    # Where senders reach ingest (the Expert Advisor posts its webhooks there): the base of the
    # webhook URLs the wizard and the controls hand out.
    ingest_url: str = Field(
        "http://127.0.0.1:8080",
        validation_alias=AliasChoices(
            "POSCAL_INGEST_PUBLIC_URL", "POSCAL_API_INGEST_URL", "INGEST_URL"
        ),
    )
    # How long a broker may take to answer a wizard's sign-in check, all requests together.
    wizard_verify_timeout_seconds: float = Field(
        20.0, gt=0, le=120, validation_alias=_env("POSCAL_API_WIZARD_VERIFY_TIMEOUT_SECONDS")
    )
    # How long provisioning a cloud terminal (MT5 cloud sync) may take before the session fails,
    # and how often its state is asked meanwhile.
    wizard_provisioning_timeout_seconds: float = Field(
        600.0, gt=0, validation_alias=_env("POSCAL_API_WIZARD_PROVISIONING_TIMEOUT_SECONDS")
    )
    wizard_provisioning_poll_seconds: float = Field(
        5.0, gt=0, validation_alias=_env("POSCAL_API_WIZARD_PROVISIONING_POLL_SECONDS")
    )
    # Cloud terminals being provisioned for one user at once, at most (each is billed, and the
    # service's rate limits are everyone's).
    wizard_provisioning_per_user: int = Field(
        2, ge=1, validation_alias=_env("POSCAL_API_WIZARD_PROVISIONING_PER_USER")
    )
    # How long a wizard session (and the credentials it sealed) waits to be confirmed.
    wizard_session_minutes: int = Field(
        30, ge=1, le=24 * 60, validation_alias=_env("POSCAL_API_WIZARD_SESSION_MINUTES")
    )
    # New connections' poll interval.
    poll_interval_seconds: int = Field(
        60, ge=1, validation_alias=_env("POSCAL_API_POLL_INTERVAL_SECONDS")
    )
    # The operator's override of brokers' API addresses (a proxy; local fakes in tests), as
    # `broker=base URL` pairs, comma-separated: the wizard signs in there, and the connections
    # it makes are polled there (their api_url).
    broker_urls: str = Field("", validation_alias=_env("POSCAL_API_BROKER_URLS"))
    # The poller's per-user sync limit (the same variable): "sync now" is refused past it, as
    # the poller would not sync the connection before then anyway.
    sync_rate_per_user: str = Field("30/minute", validation_alias=_env("POSCAL_SYNC_RATE_PER_USER"))
    # "Sync now" of one connection at most this often (its last attempt counts).
    sync_now_min_interval_seconds: int = Field(
        60, ge=0, le=86_400, validation_alias=_env("POSCAL_API_SYNC_NOW_MIN_INTERVAL_SECONDS")
    )
    # Prometheus metrics on a port of their own (None or 0: not served), bound to this host:
    # never on the API's port, which users reach.
    metrics_port: int | None = metrics_port_setting("API")
    metrics_host: str = metrics_host_setting("API")

    @property
    def algorithms(self) -> frozenset[str]:
        if self.jwt_algorithms.strip():
            return frozenset(a.strip() for a in self.jwt_algorithms.split(",") if a.strip())
        found = set()
        if self.jwt_secret is not None:
            found.add(SYMMETRIC)
        if self.jwks_url:
            found.update(ASYMMETRIC)
        return frozenset(found)

    @property
    def origins(self) -> tuple[str, ...]:
        return tuple(o.strip().rstrip("/") for o in self.cors_origins.split(",") if o.strip())

    @field_validator("rate_limit_per_user", "auth_failures_per_client")
    @classmethod
    def _a_rate_limit(cls, value: str) -> str:
        TokenBuckets(value)  # raises ValueError with the offending text
        return value

    @field_validator("sync_rate_per_user")
    @classmethod
    def _a_sync_limit(cls, value: str) -> str:
        UserSyncLimit.parse(value)
        return value

    @property
    def user_sync_limit(self) -> UserSyncLimit:
        return UserSyncLimit.parse(self.sync_rate_per_user)

    @property
    def broker_url_overrides(self) -> dict[str, str]:
        pairs = (p.partition("=") for p in self.broker_urls.split(",") if p.strip())
        return {name.strip(): url.strip().rstrip("/") for name, _, url in pairs}

    @field_validator("broker_urls")
    @classmethod
    def _broker_urls(cls, value: str) -> str:
        for pair in (p.strip() for p in value.split(",") if p.strip()):
            name, sep, url = pair.partition("=")
            if not sep or not name.strip() or not url.strip().startswith(("http://", "https://")):
                raise ValueError(f"POSCAL_API_BROKER_URLS: not broker=http(s)://...: {pair!r}")
        return value

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, value: str) -> str:
        parse_networks(value)
        return value

    @field_validator("cors_origins")
    @classmethod
    def _exact_origins(cls, value: str) -> str:
        for origin in (o.strip() for o in value.split(",")):
            if origin == "*":
                raise ValueError("POSCAL_API_CORS_ORIGINS takes exact origins, not '*'")
            if origin and not origin.startswith(("https://", "http://")):
                raise ValueError(f"not an origin (scheme://host[:port]): {origin!r}")
        return value

    @model_validator(mode="after")
    def _keys_for_every_algorithm(self) -> ApiSettings:
        algorithms = self.algorithms
        if not algorithms:
            raise ValueError("set POSCAL_API_JWT_SECRET or POSCAL_API_JWKS_URL: no token verifies")
        unknown = algorithms - {SYMMETRIC, *ASYMMETRIC}
        if unknown:
            raise ValueError(f"POSCAL_API_JWT_ALGORITHMS: unsupported {', '.join(sorted(unknown))}")
        if SYMMETRIC in algorithms:
            if self.jwt_secret is None:
                raise ValueError("HS256 needs POSCAL_API_JWT_SECRET")
            if len(self.jwt_secret.get_secret_value().encode()) < MIN_SECRET_BYTES:
                raise ValueError(f"POSCAL_API_JWT_SECRET must be {MIN_SECRET_BYTES} bytes or more")
        if algorithms & set(ASYMMETRIC) and not self.jwks_url:
            raise ValueError("ES256 and RS256 need POSCAL_API_JWKS_URL")
        return self
