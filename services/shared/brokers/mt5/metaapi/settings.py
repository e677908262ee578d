"""MetaApi as the operator configures it (service configuration, never per user): the API token,
from the environment or a secret store, the API hosts and how the sync pages."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from typing import Protocol, cast

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.shared.errors import PermanentError
from services.shared.providers import provided

PROVISIONING_URL = "https://mt-provisioning-api-v1.agiliumtrade.agiliumtrade.ai"
# The client (MetaTrader) API answers for an account in the region its terminal runs in.
CLIENT_URL = "https://mt-client-api-v1.{region}.agiliumtrade.ai"
DEFAULT_REGION = "new-york"


class MetaApiNotConfigured(PermanentError):
    """Cloud sync needs the operator's MetaApi token, and none is configured."""

    def __init__(self, detail: str) -> None:
        super().__init__(f"MetaApi cloud sync is not configured: {detail}")


class MetaApiSettings(BaseSettings):
    model_config = SettingsConfigDict(frozen=True, extra="ignore", populate_by_name=True)

    token: SecretStr | None = Field(None, validation_alias=AliasChoices("POSCAL_METAAPI_TOKEN"))
    # A secret store instead of the environment: `package.module:factory`, called once with no
    # arguments; what it returns has `token()`, asked for the token each time a client is made
    # (so a token rotated in the store is used from then on).
    token_provider: str | None = Field(
        None, validation_alias=AliasChoices("POSCAL_METAAPI_TOKEN_PROVIDER")
    )
    provisioning_url: str = Field(
        PROVISIONING_URL, validation_alias=AliasChoices("POSCAL_METAAPI_PROVISIONING_URL")
    )
    # `{region}` is replaced by the region of the account's terminal.
    client_url: str = Field(CLIENT_URL, validation_alias=AliasChoices("POSCAL_METAAPI_CLIENT_URL"))
    region: str = Field(DEFAULT_REGION, validation_alias=AliasChoices("POSCAL_METAAPI_REGION"))
    # MetaApi counts credits per token, user and account; this holds the whole process to it.
    requests_per_second: float = Field(
        10.0, gt=0, validation_alias=AliasChoices("POSCAL_METAAPI_REQUESTS_PER_SECOND")
    )
    # Deals are read again from this long before the newest one synced: a deal the terminal
    # learns of late (a reconnect, a back-dated charge) still arrives.
    overlap_seconds: float = Field(
        3600.0, ge=0, validation_alias=AliasChoices("POSCAL_METAAPI_OVERLAP_SECONDS")
    )


TokenSource = Callable[[], str]


@dataclass(frozen=True)
class MetaApiConfig:
    """What the MetaApi client, adapter and provisioner are built with."""

    token: TokenSource = field(repr=False)
    provisioning_url: str = PROVISIONING_URL
    client_url: str = CLIENT_URL
    region: str = DEFAULT_REGION
    requests_per_second: float = 10.0
    overlap_seconds: float = 3600.0

    def client_base(self, region: str | None, override: str | None = None) -> str:
        """The client API's base URL for a terminal in `region` (`override`: a connection's
        own api_url, for proxies and tests)."""
        if override:
            return override.rstrip("/")
        return self.client_url.replace("{region}", region or self.region).rstrip("/")


class TokenStore(Protocol):
    """A secret store holding the operator's MetaApi token (POSCAL_METAAPI_TOKEN_PROVIDER)."""

    def token(self) -> str: ...


def _provided_token(spec: str) -> TokenSource:
    try:
        store = cast(
            TokenStore,
            provided(spec, "POSCAL_METAAPI_TOKEN_PROVIDER", ("token",), "an object with token()"),
        )
    except ValueError as exc:
        raise MetaApiNotConfigured(str(exc)) from None

    def read() -> str:
        value = store.token()
        if not isinstance(value, str) or not value.strip():
            raise MetaApiNotConfigured("the token provider returned no token")
        return value.strip()

    return read


def config_from(settings: MetaApiSettings) -> MetaApiConfig:
    """MetaApiNotConfigured (never quoting a token) when there is no token to use."""
    if settings.token_provider:
        token = _provided_token(settings.token_provider)
    elif settings.token is not None and settings.token.get_secret_value().strip():
        secret = settings.token.get_secret_value().strip()

        def token() -> str:
            return secret

    else:
        raise MetaApiNotConfigured("set POSCAL_METAAPI_TOKEN or POSCAL_METAAPI_TOKEN_PROVIDER")
    return MetaApiConfig(
        token=token,
        provisioning_url=settings.provisioning_url.rstrip("/"),
        client_url=settings.client_url,
        region=settings.region,
        requests_per_second=settings.requests_per_second,
        overlap_seconds=settings.overlap_seconds,
    )


@cache
def configured() -> MetaApiConfig:
    """The process's MetaApi configuration, read from the environment once."""
    return config_from(MetaApiSettings())
