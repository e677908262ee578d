"""MetaApi as the cloud-terminal service of MT5 connections: an account created from the user's
sign-in (platform mt5, investor password), deployed, watched until connected, checked, removed.
Every failure is a ProvisioningError a wizard can show."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import httpx

from services.shared.brokers.errors import (
    BrokerRequestFailed,
    BrokerUnavailable,
    CredentialsRejected,
    UnexpectedResponse,
)
from services.shared.brokers.http import RetryPolicy, Sleep, retry_after_seconds
from services.shared.brokers.mt5.metaapi.client import (
    BROKER,
    MetaApiClient,
    MetaApiTokenRefused,
    read_json,
)
from services.shared.brokers.mt5.metaapi.mapping import trade_mode_problem
from services.shared.brokers.mt5.metaapi.settings import (
    MetaApiConfig,
    MetaApiNotConfigured,
    configured,
)
from services.shared.brokers.mt5.metaapi.signin import CredentialsForAnotherAccount, read_sign_in
from services.shared.brokers.polling import CloudTerminal
from services.shared.brokers.provisioning import (
    Creation,
    Phase,
    ProvisioningError,
    ProvisioningRefused,
    ProvisioningUnavailable,
    TerminalRequest,
    TerminalService,
    TerminalStatus,
)
from services.shared.envelope import ConnectionRef
from services.shared.errors import PermanentError

PROVIDER = "metaapi"
# While MetaApi detects the broker's settings it answers 202 and says when to ask again; when it
# does not say, this.
DEFAULT_DETECTION_WAIT_SECONDS = 60.0
# What MetaApi's `details` of a refused account creation means for the person entering it.
_CREATION_REFUSALS: dict[str, tuple[str, str, bool]] = {
    "E_SRV_NOT_FOUND": (
        "server_not_found",
        "MetaApi knows no MT5 server named {server!r}: enter the server exactly as the MT5"
        " terminal shows it (File > Login to Trade Account)",
        True,
    ),
    "E_AUTH": (
        "wrong_login_or_password",
        "the broker refused login {login} on {server!r} with this password: check the login and"
        " the investor (read-only) password",
        True,
    ),
    "E_SERVER_TIMEZONE": (
        "broker_settings_undetected",
        "MetaApi could not detect the settings of server {server!r} yet: try again later",
        False,
    ),
}
_READY, _CONNECTED = "DEPLOYED", "CONNECTED"
_STOPPED = frozenset({"UNDEPLOYING", "UNDEPLOYED", "UNDEPLOY_FAILED", "DELETING", "DELETE_FAILED"})
_FAILED = frozenset({"DEPLOY_FAILED", "REDEPLOY_FAILED"})


def terminal_phase(state: str, connection_status: str) -> Phase:
    """Where a MetaApi account stands, from its `state` and `connectionStatus`."""
    if state in _FAILED:
        return "failed"
    if state in _STOPPED:
        return "stopped"
    if state != _READY:
        return "deploying"  # CREATED, DEPLOYING (and any state MetaApi adds later)
    if connection_status == _CONNECTED:
        return "ready"
    if connection_status == "DISCONNECTED_FROM_BROKER":
        return "broker_unreachable"
    return "connecting"


def account_status(document: Mapping[str, Any], region: str | None = None) -> TerminalStatus:
    """A MetatraderAccount of the provisioning API as a terminal status."""
    account_id = document.get("_id", document.get("id"))
    state, connection = document.get("state"), document.get("connectionStatus", "DISCONNECTED")
    if not isinstance(account_id, str) or not isinstance(state, str):
        raise UnexpectedResponse(BROKER, "account", "no `_id` and `state`")
    found_region = document.get("region")
    return TerminalStatus(
        terminal=CloudTerminal(
            PROVIDER, account_id, found_region if isinstance(found_region, str) else region
        ),
        phase=terminal_phase(state, str(connection)),
        state=state,
        connection_status=str(connection),
    )


class TerminalGone(PermanentError):
    """MetaApi has no such account (any more)."""

    def __init__(self, account_id: str) -> None:
        super().__init__(
            f"MetaApi has no account {account_id} (removed at MetaApi?): provision the"
            " connection again (`poscal-sync connections provision ID`)"
        )
        self.account_id = account_id


@asynccontextmanager
async def _explained(what: str) -> AsyncIterator[None]:
    """Every failure of MetaApi or its client as a ProvisioningError, saying `what` failed."""
    try:
        yield
    except ProvisioningError:
        raise
    except (MetaApiTokenRefused, MetaApiNotConfigured) as exc:
        raise ProvisioningUnavailable(
            "service_not_configured",
            f"cloud sync is not available now (the service's MetaApi access is misconfigured:"
            f" {exc}); the operator has been told, try again later",
        ) from None
    except CredentialsForAnotherAccount as exc:
        raise ProvisioningRefused("credentials_for_another_account", str(exc)) from None
    except CredentialsRejected as exc:  # unreadable
        raise ProvisioningRefused("credentials_unreadable", str(exc)) from None
    except TerminalGone as exc:
        raise ProvisioningUnavailable("terminal_gone", str(exc)) from None
    except BrokerUnavailable as exc:
        raise ProvisioningUnavailable(
            "service_unavailable",
            f"MetaApi cannot {what} now ({exc}): try again later",
            retry_after=exc.retry_after,
        ) from None
    except (BrokerRequestFailed, UnexpectedResponse) as exc:
        raise ProvisioningUnavailable(
            "service_unavailable", f"MetaApi could not {what}: {exc}"
        ) from None


class MetaApiTerminals:
    def __init__(
        self,
        http: httpx.AsyncClient,
        config: MetaApiConfig | None = None,
        *,
        retry: RetryPolicy | None = None,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self._http = http
        self._config = config
        self._retry = retry
        self._sleep = sleep

    @property
    def provider(self) -> str:
        return PROVIDER

    def _client(self, *secrets: str) -> MetaApiClient:
        config = self._config or configured()
        return MetaApiClient(
            config, self._http, retry=self._retry, sleep=self._sleep, secrets=secrets
        )

    async def create(self, request: TerminalRequest) -> Creation:
        async with _explained("create the cloud terminal"):
            sign_in = read_sign_in(request.credentials, request.connection)
            config = self._config or configured()
            client = self._client(sign_in.password)
            try:
                response = await client.create_account(
                    {
                        "name": request.name,
                        "type": "cloud-g2",
                        "login": sign_in.login,
                        # The investor password: MetaApi's terminal can read, never trade.
                        "password": sign_in.password,
                        "server": sign_in.server,
                        "platform": "mt5",
                        "magic": 0,
                        "region": config.region,
                    },
                    request.transaction_id,
                )
            except BrokerRequestFailed as exc:
                raise self._creation_refused(exc, sign_in.login, sign_in.server) from None
            if response.status_code == 202:
                wait = retry_after_seconds(response.headers.get("Retry-After"), datetime.now(UTC))
                return Creation(None, DEFAULT_DETECTION_WAIT_SECONDS if wait is None else wait)
            document = read_json(response)
            account_id = document.get("id") if isinstance(document, dict) else None
            if not isinstance(account_id, str) or not account_id:
                raise UnexpectedResponse(BROKER, "account creation", "no account `id`")
            return Creation(account_id)

    def _creation_refused(
        self, exc: BrokerRequestFailed, login: str, server: str
    ) -> ProvisioningError:
        known = _CREATION_REFUSALS.get(exc.error_code or "")
        if known is None:
            return ProvisioningRefused("refused", f"MetaApi refused to create the terminal: {exc}")
        code, message, refused = known
        text = message.format(login=login, server=server)
        return ProvisioningRefused(code, text) if refused else ProvisioningUnavailable(code, text)

    async def deploy(self, account_id: str, request: TerminalRequest) -> None:
        async with _explained("deploy the cloud terminal"):
            try:
                await self._known(self._client().deploy(account_id), account_id)
            except BrokerRequestFailed as exc:
                # MetaApi may check the sign-in on deploying too (E_AUTH, E_SRV_NOT_FOUND).
                connection = request.connection
                raise self._creation_refused(
                    exc, connection.account_number, connection.server or ""
                ) from None

    async def status(self, account_id: str) -> TerminalStatus:
        async with _explained("say how the cloud terminal is doing"):
            document = await self._known(self._client().read_account(account_id), account_id)
            return account_status(document)

    async def check_account(
        self, terminal: CloudTerminal, request: TerminalRequest
    ) -> dict[str, Any]:
        async with _explained("read the account"):
            config = self._config or configured()
            base = config.client_base(terminal.region)
            try:
                info = await self._client().account_information(base, terminal.account_id)
            except BrokerRequestFailed as exc:
                if exc.status_code == 404:
                    raise ProvisioningUnavailable(
                        "not_connected",
                        "MetaApi's terminal is not connected to the broker yet: try again later",
                    ) from None
                raise
            return checked_account(info, request.connection)

    async def remove(self, account_id: str) -> None:
        async with _explained("remove the cloud terminal"):
            client = self._client()
            for step in (client.undeploy, client.delete):
                try:
                    await step(account_id)
                except BrokerRequestFailed as exc:
                    if exc.status_code != 404:  # already gone is what was asked
                        raise

    async def _known(self, call: Any, account_id: str) -> Any:
        try:
            return await call
        except BrokerRequestFailed as exc:
            if exc.status_code == 404:
                raise TerminalGone(account_id) from None
            raise


def checked_account(info: Mapping[str, Any], connection: ConnectionRef) -> dict[str, Any]:
    """The preview of the account's information, once it is the connection's account and of its
    type; ProvisioningRefused otherwise."""
    login = connection.account_number
    found_login, server, mode = info.get("login"), info.get("server"), info.get("type")
    if str(found_login) != login or server != connection.server:
        raise ProvisioningRefused(
            "account_mismatch",
            f"MetaApi's terminal is logged in to login {found_login} on {server!r}, not"
            f" {login} on {connection.server!r}",
        )
    problem = trade_mode_problem(connection.connection_type, str(mode))
    if problem is not None:
        other = "live" if connection.connection_type == "demo" else "demo"
        raise ProvisioningRefused(
            "trade_mode_mismatch",
            f"MT5 account {login} on {server!r} {problem}: connect it as a {other} connection",
        )
    return {
        "login": str(found_login),
        "server": server,
        "broker": info.get("broker"),
        "currency": info.get("currency"),
        "balance": str(info.get("balance")),
        "equity": str(info.get("equity")),
        "trade_mode": mode,
    }


def create(http: httpx.AsyncClient) -> TerminalService:
    return MetaApiTerminals(http)
