"""A fake MetaApi over real HTTP, following its documented REST APIs on one host: provisioning
(accounts created under a transaction id, read with `state` and `connectionStatus`, deployed,
undeployed, deleted) and the MetaTrader client API (account-information, history-deals by time
range with offset and limit, positions), with shapes from tests/fixtures/metaapi.

    with FakeMetaApi() as metaapi:
        metaapi.add_login(LOGIN, "investor-pw", server="PosCal-Test", trade_mode=DEMO)
        metaapi.deploy_reads, metaapi.connect_reads = 3, 2     # a slow deploy
        metaapi.fail_next(1, 429, retry_after="1")             # or recommended_in=0.5
        account_id = metaapi.provisioned(LOGIN)                # a deployed, connected terminal
        metaapi.add_deals(account_id, [as_metaapi_deal(trade_deal, offset)])

As MetaApi: no or another `auth-token` is 401; a creation without `transaction-id` is 400; an
unknown server is 400 E_SRV_NOT_FOUND, a wrong login or password 400 E_AUTH; while validating
(`validation_reads`) a creation answers 202 with Retry-After, and the same transaction id is
asked again for the outcome; an unknown account is 404; a page over 1000 deals is 400.
"""

from __future__ import annotations

import copy
import itertools
import json
import threading
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from services.shared.brokers.mt5.deals import DEAL_ENTRIES, DEAL_TYPES
from tests.support.builders import FIXTURES
from tests.support.served_app import RequestTally, ServedApp

TOKEN = "metaapi-0perat0r-t0ken.eyJfaWQiOiJwb3NjYWwtdGVzdCJ9"
DEMO, REAL = "ACCOUNT_TRADE_MODE_DEMO", "ACCOUNT_TRADE_MODE_REAL"
MAX_DEALS = 1000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_DEAL_TYPE_NAMES = {number: name for name, number in DEAL_TYPES.items()} | {
    15: "DEAL_DIVIDEND",  # as MetaApi spells these three
    16: "DEAL_DIVIDEND_FRANKED",
    17: "DEAL_TAX",
}
_ENTRY_NAMES = {number: name for name, number in DEAL_ENTRIES.items()}

Handler = Callable[[Request], Awaitable[Response]]


def samples() -> dict[str, Any]:
    document: dict[str, Any] = json.loads(
        (FIXTURES / "metaapi" / "samples.json").read_text(), parse_float=Decimal
    )
    return document


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def as_metaapi_deal(deal: dict[str, Any], server_offset_seconds: int) -> dict[str, Any]:
    """An MT5 TradeDeal (the webhook's, the MetaTrader5 package's fields) as MetaApi describes
    the same deal: string ids, type and entry by name, `time` in UTC and `brokerTime` the
    server's wall clock, no position, order or symbol for a balance operation."""
    server_ms = deal["time_msc"] or deal["time"] * 1000
    wall = _EPOCH + timedelta(milliseconds=server_ms)
    made: dict[str, Any] = {
        "id": str(deal["ticket"]),
        "platform": "mt5",
        "type": _DEAL_TYPE_NAMES[deal["type"]],
        "time": iso(wall - timedelta(seconds=server_offset_seconds)),
        "brokerTime": wall.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3],
        "profit": deal["profit"],
        "commission": deal["commission"],
        "swap": deal["swap"],
        "magic": deal["magic"],
    }
    if deal["type"] in (0, 1, 13, 14) or deal["entry"]:
        made["entryType"] = _ENTRY_NAMES[deal["entry"]]
    if deal["symbol"]:
        made |= {"symbol": deal["symbol"], "volume": deal["volume"], "price": deal["price"]}
    if deal["position_id"]:
        made["positionId"] = str(deal["position_id"])
    if deal["order"]:
        made["orderId"] = str(deal["order"])
    if deal["comment"]:
        made["comment"] = deal["comment"]
    return made


def _json(document: Any, status_code: int = 200, headers: dict[str, str] | None = None) -> Response:
    def exact(value: object) -> orjson.Fragment:
        if isinstance(value, Decimal):
            return orjson.Fragment(str(value))
        raise TypeError(type(value).__name__)

    return Response(
        orjson.dumps(document, default=exact),
        status_code=status_code,
        headers=headers,
        media_type="application/json",
    )


def _error(status_code: int, error: str, message: str, details: str | None = None) -> Response:
    document: dict[str, Any] = {"id": 1, "error": error, "message": message}
    if details is not None:
        document["details"] = details
    return _json(document, status_code)


@dataclass
class Login:
    """An MT5 account at a broker, as the fake's broker servers know it."""

    login: str
    password: str
    server: str
    trade_mode: str
    balance: Decimal = Decimal("10000.00")
    currency: str = "USD"


@dataclass
class Account:
    """A MetaApi account (a cloud terminal): its state as the provisioning API reports it."""

    id: str
    login: Login
    name: str
    region: str
    state: str = "DEPLOYING"
    connection_status: str = "DISCONNECTED"
    reads: int = 0  # status reads since the last deploy
    deals: list[dict[str, Any]] = field(default_factory=list)
    positions: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class _Failure:
    status_code: int
    remaining: int
    retry_after: str | None
    recommended_in: float | None
    path_suffix: str
    exceeded: str = "perUser"


class FakeMetaApi(ServedApp):
    def __init__(self, *, token: str = TOKEN, region: str = "new-york") -> None:
        self.token = token
        self.region = region
        self.requests = RequestTally()
        self.created_with: list[dict[str, Any]] = []  # creation bodies, as received
        self.deal_pages: list[tuple[str, str, int, int]] = []  # (start, end, offset, limit)
        # How MetaApi is slow today: 202s per creation, status reads DEPLOYING, then DEPLOYED
        # and DISCONNECTED, before CONNECTED; a broker that never answers stays
        # DISCONNECTED_FROM_BROKER.
        self.validation_reads = 0
        self.deploy_reads = 0
        self.connect_reads = 0
        self.broker_unreachable = False
        self._logins: dict[tuple[str, str], Login] = {}
        self._accounts: dict[str, Account] = {}
        self._transactions: dict[str, str | int] = {}  # transaction id -> account id or 202s
        self._failures: list[_Failure] = []
        self._lock = threading.Lock()
        accounts = "/users/current/accounts"
        one = f"{accounts}/{{account_id}}"
        super().__init__(
            Starlette(
                routes=[
                    Route(accounts, self._guarded(self._create), methods=["POST"]),
                    Route(one, self._guarded(self._read), methods=["GET"]),
                    Route(one, self._guarded(self._delete), methods=["DELETE"]),
                    Route(f"{one}/deploy", self._guarded(self._deploy), methods=["POST"]),
                    Route(f"{one}/undeploy", self._guarded(self._undeploy), methods=["POST"]),
                    Route(f"{one}/account-information", self._guarded(self._information)),
                    Route(f"{one}/positions", self._guarded(self._positions)),
                    Route(
                        f"{one}/history-deals/time/{{start}}/{{end}}",
                        self._guarded(self._deals_by_time),
                    ),
                ]
            )
        )

    # What a test sets up and changes.

    def add_login(
        self, login: int | str, password: str, *, server: str, trade_mode: str = DEMO
    ) -> Login:
        made = Login(str(login), password, server, trade_mode)
        with self._lock:
            self._logins[(server, str(login))] = made
        return made

    def provisioned(self, login: int | str, server: str) -> str:
        """A deployed, connected terminal for a login added before: its account id."""
        with self._lock:
            found = self._logins[(server, str(login))]
            account = Account(
                str(uuid.uuid4()),
                found,
                "provisioned by the test",
                self.region,
                state="DEPLOYED",
                connection_status="CONNECTED",
            )
            self._accounts[account.id] = account
        return account.id

    def account(self, account_id: str) -> Account | None:
        with self._lock:
            return self._accounts.get(account_id)

    @property
    def accounts(self) -> list[Account]:
        with self._lock:
            return list(self._accounts.values())

    def add_deals(self, account_id: str, deals: list[dict[str, Any]]) -> None:
        with self._lock:
            self._accounts[account_id].deals.extend(copy.deepcopy(deals))

    def set_positions(self, account_id: str, positions: list[dict[str, Any]]) -> None:
        with self._lock:
            self._accounts[account_id].positions = copy.deepcopy(positions)

    def fail_next(
        self,
        times: int,
        status_code: int,
        *,
        retry_after: str | None = None,
        recommended_in: float | None = None,
        path_suffix: str = "",
        exceeded: str = "perUser",
    ) -> None:
        """Answer the next `times` requests (to paths ending in `path_suffix`) with this status;
        a 429 is MetaApi's TooManyRequestsError, its `recommendedRetryTime` `recommended_in`
        seconds from now when given, its `exceededConfig` the limit that was hit (`perUser`:
        the token's, every account's; `perAccount`: the one account's own)."""
        with self._lock:
            self._failures.append(
                _Failure(status_code, times, retry_after, recommended_in, path_suffix, exceeded)
            )

    # The server side.

    def _guarded(self, handler: Handler) -> Handler:
        async def guarded(request: Request) -> Response:
            key = request.path_params.get("account_id", "provisioning")
            with self.requests.request(request.url.path, key):
                if request.headers.get("auth-token") != self.token:
                    return _error(401, "UnauthorizedError", "Authorization token invalid")
                injected = self._injected_failure(request.url.path)
                if injected is not None:
                    return injected
                return await handler(request)

        return guarded

    def _injected_failure(self, path: str) -> Response | None:
        with self._lock:
            failure = next(
                (f for f in self._failures if f.remaining > 0 and path.endswith(f.path_suffix)),
                None,
            )
            if failure is None:
                return None
            failure.remaining -= 1
        headers = {"Retry-After": failure.retry_after} if failure.retry_after else None
        if failure.status_code != 429:
            document = {"id": 1, "error": "InternalError", "message": "injected failure"}
            return _json(document, failure.status_code, headers)
        metadata: dict[str, Any] = {
            "periodInSeconds": 1,
            "creditsAvailable": 0,
            "exceededConfig": failure.exceeded,
            "exceededPeriod": "1s",
        }
        if failure.recommended_in is not None:
            when = datetime.now(UTC) + timedelta(seconds=failure.recommended_in)
            metadata["recommendedRetryTime"] = iso(when)
        document = {
            "id": 1,
            "error": "TooManyRequestsError",
            "message": "The API allows 1000 cpu credits per 1s to avoid overloading our servers",
            "metadata": metadata,
        }
        return _json(document, 429, headers)

    def _known(self, request: Request) -> Account | Response:
        account = self.account(request.path_params["account_id"])
        if account is None:
            return _error(404, "NotFoundError", "Trading account not found")
        return account

    async def _create(self, request: Request) -> Response:
        transaction_id = request.headers.get("transaction-id")
        if not transaction_id:
            return _error(400, "ValidationError", "transaction-id header is required")
        body = json.loads(await request.body())
        missing = [
            k for k in ("name", "server", "login", "password", "platform") if not body.get(k)
        ]
        if missing or body["platform"] != "mt5":
            return _error(400, "ValidationError", f"invalid account: {missing or 'platform'}")
        with self._lock:
            self.created_with.append(body)
            known = self._transactions.get(transaction_id, 0)
            if isinstance(known, str):  # asked again for the outcome: the same account
                return _json({"id": known, "state": self._accounts[known].state}, 201)
            if known < self.validation_reads:
                self._transactions[transaction_id] = known + 1
                return Response(status_code=202, headers={"Retry-After": "1"})
            servers = {server for server, _ in self._logins}
            login = self._logins.get((body["server"], str(body["login"])))
        if body["server"] not in servers:
            return _error(
                400,
                "ValidationError",
                "We were unable to retrieve the server file for this broker",
                "E_SRV_NOT_FOUND",
            )
        if login is None or login.password != body["password"]:
            return _error(
                400,
                "ValidationError",
                "We failed to authenticate to your broker using credentials provided",
                "E_AUTH",
            )
        account = Account(str(uuid.uuid4()), login, body["name"], body.get("region") or self.region)
        with self._lock:
            self._accounts[account.id] = account
            self._transactions[transaction_id] = account.id
        return _json({"id": account.id, "state": account.state}, 201)

    async def _read(self, request: Request) -> Response:
        found = self._known(request)
        if isinstance(found, Response):
            return found
        with self._lock:
            found.reads += 1
            if found.state == "DEPLOYING" and found.reads > self.deploy_reads:
                found.state, found.reads = "DEPLOYED", 0
            elif found.state == "DEPLOYED" and found.connection_status != "CONNECTED":
                if self.broker_unreachable:
                    found.connection_status = "DISCONNECTED_FROM_BROKER"
                elif found.reads > self.connect_reads:
                    found.connection_status = "CONNECTED"
            document = {
                "_id": found.id,
                "name": found.name,
                "type": "cloud-g2",
                "login": found.login.login,
                "server": found.login.server,
                "platform": "mt5",
                "magic": 0,
                "region": found.region,
                "state": found.state,
                "connectionStatus": found.connection_status,
                "reliability": "regular",
            }
        return _json(document)

    async def _deploy(self, request: Request) -> Response:
        found = self._known(request)
        if isinstance(found, Response):
            return found
        with self._lock:
            if found.state != "DEPLOYED":
                found.state, found.connection_status, found.reads = "DEPLOYING", "DISCONNECTED", 0
        return Response(status_code=204)

    async def _undeploy(self, request: Request) -> Response:
        found = self._known(request)
        if isinstance(found, Response):
            return found
        with self._lock:
            found.state, found.connection_status = "UNDEPLOYED", "DISCONNECTED"
        return Response(status_code=204)

    async def _delete(self, request: Request) -> Response:
        found = self._known(request)
        if isinstance(found, Response):
            return found
        with self._lock:
            del self._accounts[found.id]
        return Response(status_code=204)

    def _connected(self, request: Request) -> Account | Response:
        found = self._known(request)
        if isinstance(found, Response):
            return found
        if found.state != "DEPLOYED" or found.connection_status != "CONNECTED":
            return _error(404, "NotFoundError", "Account is not connected to broker yet")
        return found

    async def _information(self, request: Request) -> Response:
        found = self._connected(request)
        if isinstance(found, Response):
            return found
        document = samples()["rest_GET_account_information_response"]
        document.update(
            login=int(found.login.login),
            server=found.login.server,
            type=found.login.trade_mode,
            balance=found.login.balance,
            equity=found.login.balance,
            currency=found.login.currency,
        )
        return _json(document)

    async def _positions(self, request: Request) -> Response:
        found = self._connected(request)
        if isinstance(found, Response):
            return found
        with self._lock:
            return _json(list(found.positions))

    async def _deals_by_time(self, request: Request) -> Response:
        found = self._connected(request)
        if isinstance(found, Response):
            return found
        try:
            start = datetime.fromisoformat(request.path_params["start"])
            end = datetime.fromisoformat(request.path_params["end"])
            offset = int(request.query_params.get("offset", "0"))
            limit = int(request.query_params.get("limit", str(MAX_DEALS)))
        except ValueError:
            return _error(400, "ValidationError", "invalid time range, offset or limit")
        if not 1 <= limit <= MAX_DEALS or offset < 0:
            return _error(400, "ValidationError", f"limit must be 1 to {MAX_DEALS}")
        with self._lock:
            self.deal_pages.append(
                (request.path_params["start"], request.path_params["end"], offset, limit)
            )
            chosen = sorted(
                (
                    d
                    for d in found.deals
                    if start <= datetime.fromisoformat(d["time"]) < end  # end exclusive
                ),
                key=lambda d: (d["time"], int(d["id"])),
            )
        return _json(chosen[offset : offset + limit])


_tickets = itertools.count(5_000_000)


def numbered_deals(count: int, *, start: datetime, symbol: str = "EURUSD") -> list[dict[str, Any]]:
    """`count` closed round trips as MetaApi deals (an IN and an OUT deal each, a minute
    apart), from `start` on, with fresh tickets; a deposit first."""
    deals: list[dict[str, Any]] = [
        {
            "id": str(next(_tickets)),
            "platform": "mt5",
            "type": "DEAL_TYPE_BALANCE",
            "time": iso(start),
            "brokerTime": (start + timedelta(hours=3)).strftime("%Y-%m-%d %H:%M:%S.000"),
            "profit": Decimal("10000"),
            "commission": Decimal("0"),
            "swap": Decimal("0"),
            "comment": "Deposit",
        }
    ]
    for number in range(count):
        position = str(next(_tickets))
        for minute, (side, entry, profit) in enumerate(
            (("DEAL_TYPE_BUY", "DEAL_ENTRY_IN", "0"), ("DEAL_TYPE_SELL", "DEAL_ENTRY_OUT", "1.5"))
        ):
            moment = start + timedelta(minutes=2 * number + minute + 1)
            deals.append(
                {
                    "id": position if minute == 0 else str(next(_tickets)),
                    "platform": "mt5",
                    "type": side,
                    "entryType": entry,
                    "symbol": symbol,
                    "time": iso(moment),
                    "brokerTime": (moment + timedelta(hours=3)).strftime("%Y-%m-%d %H:%M:%S.000"),
                    "volume": Decimal("0.1"),
                    "price": Decimal("1.085"),
                    "profit": Decimal(profit),
                    "commission": Decimal("-0.35"),
                    "swap": Decimal("0"),
                    "positionId": position,
                    "orderId": position,
                    "magic": 0,
                }
            )
    return deals
