"""MetaApi's REST APIs, each request through BrokerHttp with the operator's token in `auth-token`:
the provisioning API (accounts: create, read, deploy, undeploy, delete) and the client API
(account information, history deals by time range, positions)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any
from urllib.parse import quote

import httpx
import orjson
from aiolimiter import AsyncLimiter

from services.shared.brokers.errors import (
    BrokerUnavailable,
    CredentialsRejected,
    UnexpectedResponse,
)
from services.shared.brokers.http import (
    BrokerHttp,
    HostHoldOffs,
    RetryPolicy,
    Sleep,
    request_origin,
    request_target,
    shared_limiter,
)
from services.shared.brokers.mt5.metaapi.cursor import iso_millis
from services.shared.brokers.mt5.metaapi.settings import MetaApiConfig
from services.shared.errors import PermanentError

BROKER = "metaapi"
MAX_DEALS_PER_REQUEST = 1000  # MetaApi's limit for one history-deals request
CONTENT_TYPE = "application/json"


class MetaApiTokenRefused(PermanentError):
    """MetaApi refused the operator's token (401/403): the service's configuration is wrong,
    not any user's credentials, so no user's credential is marked refused for it."""

    def __init__(self, status_code: int, detail: str) -> None:
        super().__init__(
            f"MetaApi refused the service's API token (HTTP {status_code}): {detail}; the"
            " operator must check POSCAL_METAAPI_TOKEN (or its token provider)"
        )
        self.status_code = status_code


def recommended_retry_seconds(response: httpx.Response, now: datetime) -> float | None:
    """MetaApi's `metadata.recommendedRetryTime` of a TooManyRequestsError, as seconds from
    `now`; None if the body has none (the Retry-After header says it too, when sent)."""
    try:
        document = json.loads(response.content)
        when = document["metadata"]["recommendedRetryTime"]
        moment = datetime.fromisoformat(when)
    except (ValueError, KeyError, TypeError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return max(0.0, (moment - now).total_seconds())


_ACCOUNT_PATH = "/users/current/accounts/"


def account_hold_off(url: httpx.URL, response: httpx.Response | None) -> str | None:
    """A request about one MetaApi account falls under that account's own rate limit too
    (MetaApi counts credits per account besides per token and server): a 429 saying that limit
    (`metadata.exceededConfig` "perAccount") holds off that account alone, not every tenant's
    account on the host; any other holds off the host."""
    path = url.path
    if not path.startswith(_ACCOUNT_PATH):
        return None
    account = path[len(_ACCOUNT_PATH) :].split("/", 1)[0]
    if not account:
        return None
    scope = f"{request_origin(url)}{_ACCOUNT_PATH}{account}"
    if response is None:
        return scope
    try:
        exceeded = json.loads(response.content)["metadata"]["exceededConfig"]
    except (ValueError, KeyError, TypeError):
        return None
    return scope if exceeded == "perAccount" else None


def _exact(value: object) -> orjson.Fragment:
    if isinstance(value, Decimal):
        return orjson.Fragment(str(value))
    raise TypeError(f"{type(value).__name__} is not JSON")


def dumps(document: Any) -> bytes:
    """JSON with MetaApi's numbers written back as the very digits it sent."""
    return orjson.dumps(document, default=_exact)


def read_json(response: httpx.Response) -> Any:
    """A JSON answer, numbers as exact Decimals."""
    try:
        return json.loads(response.content, parse_float=Decimal)
    except ValueError as exc:
        raise UnexpectedResponse(
            BROKER, request_target(response.request.url), f"not JSON ({type(exc).__name__})"
        ) from None


def error_code(response: httpx.Response) -> str | None:
    """MetaApi's `details` code of a refused request (E_AUTH, E_SRV_NOT_FOUND...), if any."""
    try:
        document = json.loads(response.content)
    except ValueError:
        return None
    details = document.get("details") if isinstance(document, dict) else None
    return details if isinstance(details, str) and len(details) <= 64 else None


class MetaApiClient:
    """One client per adapter or provisioning; the limiter and hold-offs are shared per host
    across the process."""

    def __init__(
        self,
        config: MetaApiConfig,
        http: httpx.AsyncClient,
        *,
        retry: RetryPolicy | None = None,
        sleep: Sleep = asyncio.sleep,
        limiter: AsyncLimiter | None = None,
        hold_offs: HostHoldOffs | None = None,
        secrets: Iterable[str] = (),
    ) -> None:
        self._config = config
        self._http = http
        self._retry = retry or RetryPolicy()
        self._sleep = sleep
        self._limiter = limiter
        self._hold_offs = hold_offs
        self._secrets = tuple(s for s in secrets if s)  # also never in a message (passwords)

    def __repr__(self) -> str:  # the config's token is a callable, never printed either
        return f"MetaApiClient({self._config.provisioning_url})"

    # The provisioning API.

    def _account_url(self, account_id: str, action: str = "") -> str:
        return (
            f"{self._config.provisioning_url}/users/current/accounts/{quote(account_id, safe='')}"
            f"{action}"
        )

    async def create_account(
        self, account: Mapping[str, Any], transaction_id: str
    ) -> httpx.Response:
        """POST the new account: 201 with its id, or 202 (still validating: ask again after
        Retry-After with the same transaction id, which makes the request idempotent)."""
        return await self._send(
            "POST",
            f"{self._config.provisioning_url}/users/current/accounts",
            body=dumps(dict(account)),
            transaction_id=transaction_id,
        )

    async def read_account(self, account_id: str) -> dict[str, Any]:
        response = await self._send("GET", self._account_url(account_id))
        return self._object(response)

    async def deploy(self, account_id: str) -> None:
        await self._send("POST", self._account_url(account_id, "/deploy"))

    async def undeploy(self, account_id: str) -> None:
        await self._send("POST", self._account_url(account_id, "/undeploy"))

    async def delete(self, account_id: str) -> None:
        await self._send("DELETE", self._account_url(account_id))

    # The client API, at the terminal's region.

    async def account_information(self, base: str, account_id: str) -> dict[str, Any]:
        path = f"/users/current/accounts/{quote(account_id, safe='')}/account-information"
        return self._object(await self._send("GET", f"{base}{path}"))

    async def deals_by_time(
        self,
        base: str,
        account_id: str,
        start: datetime,
        end: datetime,
        *,
        offset: int,
        limit: int = MAX_DEALS_PER_REQUEST,
    ) -> list[Any]:
        """One page of the deals with start <= time < end (MetaApi: start inclusive, end
        exclusive), `offset` deals in, at most `limit` (1 to 1000)."""
        if not 1 <= limit <= MAX_DEALS_PER_REQUEST:
            raise ValueError(f"MetaApi pages hold 1 to {MAX_DEALS_PER_REQUEST} deals, not {limit}")
        path = (
            f"/users/current/accounts/{quote(account_id, safe='')}/history-deals/time/"
            f"{quote(iso_millis(start), safe='')}/{quote(iso_millis(end), safe='')}"
        )
        response = await self._send(
            "GET", f"{base}{path}", params={"offset": str(offset), "limit": str(limit)}
        )
        document = read_json(response)
        if isinstance(document, dict):
            # The RPC form ({deals, synchronizing}): a terminal still loading its history may
            # answer with part of it, and the cursor would pass what is missing.
            if document.get("synchronizing") is True:
                raise BrokerUnavailable(
                    "MetaApi's terminal is still synchronizing the account's history"
                )
            document = document.get("deals")
        if not isinstance(document, list):
            raise UnexpectedResponse(BROKER, request_target(response.request.url), "no deal list")
        return document

    async def positions(self, base: str, account_id: str) -> list[Any]:
        path = f"/users/current/accounts/{quote(account_id, safe='')}/positions"
        response = await self._send("GET", f"{base}{path}")
        document = read_json(response)
        if not isinstance(document, list):
            raise UnexpectedResponse(
                BROKER, request_target(response.request.url), "no position list"
            )
        return document

    # Every request.

    def _object(self, response: httpx.Response) -> dict[str, Any]:
        document = read_json(response)
        if not isinstance(document, dict):
            raise UnexpectedResponse(
                BROKER, request_target(response.request.url), "not a JSON object"
            )
        return document

    async def _send(
        self,
        method: str,
        url: str,
        *,
        params: Mapping[str, str] | None = None,
        body: bytes | None = None,
        transaction_id: str | None = None,
    ) -> httpx.Response:
        token = self._config.token()
        headers = {"auth-token": token, "Accept": CONTENT_TYPE}
        if body is not None:
            headers["Content-Type"] = CONTENT_TYPE
        if transaction_id is not None:
            headers["transaction-id"] = transaction_id
        try:
            return await self._broker_http(url).request(
                method,
                url,
                secrets=[token, *self._secrets],
                params=params,
                headers=headers,
                body=body,
            )
        except CredentialsRejected as exc:
            detail = str(exc).split(": ", 1)[-1]
            raise MetaApiTokenRefused(exc.status_code, detail) from None

    def _broker_http(self, url: str) -> BrokerHttp:
        limiter = self._limiter or shared_limiter(
            request_origin(httpx.URL(url)), self._config.requests_per_second
        )
        return BrokerHttp(
            BROKER,
            self._http,
            limiter,
            self._retry,
            self._sleep,
            hold_offs=self._hold_offs,
            wait_hint=recommended_retry_seconds,
            error_code=error_code,
            hold_off_scope=account_hold_off,
        )
