"""A fake OANDA v20 REST server over real HTTP, answering from the real samples in
tests/fixtures/oanda: the token's accounts, account summary, transactions by id range (and since
an id), open trades.

    with FakeOanda(transactions=numbered_transactions(2500)) as oanda:
        oanda.fail_next(2, 429, retry_after="3")   # then answers normally again
        oanda.add_transactions(5)                  # new activity between two polls
        oanda.reset(numbered_transactions(10))     # as new, for the next specification
        oanda.requests.count("/transactions/idrange"), oanda.id_ranges

A wrong token answers 401, another account 403, an id range over 1000 ids 400, as OANDA does.
"""

from __future__ import annotations

import asyncio
import copy
import itertools
import json
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tests.support.builders import FIXTURES
from tests.support.served_app import RequestTally, ServedApp

OANDA_FIXTURES = FIXTURES / "oanda"
ACCOUNT_ID = "101-004-1435156-001"  # the account of the summary sample
TOKEN = "0f4ke0a7da70ken5ecre7-c0ffee0ddba11deadbeefcafef00d1234"
MAX_IDRANGE_IDS = 1000

Handler = Callable[[Request], Awaitable[Response]]


def load_sample(name: str) -> dict[str, Any]:
    document: dict[str, Any] = json.loads((OANDA_FIXTURES / name).read_text(), parse_float=Decimal)
    return document


def sample_transactions() -> list[dict[str, Any]]:
    """Every real transaction object in the samples, in file order."""
    found: list[dict[str, Any]] = []
    for name in ("transactions_idrange.json", "transactions_sinceid.json"):
        found.extend(load_sample(name)["transactions"])
    for name in (
        "order_fill_open_2022_real.json",
        "order_fill_trade_reduced_partial_close.json",
        "trade_close_full_response.json",
    ):
        document = load_sample(name)
        found.extend([document["orderCreateTransaction"], document["orderFillTransaction"]])
    return found


def numbered_transactions(
    count: int, *, first_id: int = 1, account_id: str = ACCOUNT_ID
) -> list[dict[str, Any]]:
    """`count` transactions with ids first_id, first_id+1, ..., copied from the samples in turn
    (only id, batchID and accountID changed)."""
    samples = itertools.cycle(sample_transactions())
    made = []
    for number in range(first_id, first_id + count):
        transaction = copy.deepcopy(next(samples))
        transaction.update(id=str(number), batchID=str(number), accountID=account_id)
        made.append(transaction)
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


@dataclass
class _Failure:
    status_code: int
    remaining: int
    retry_after: str | None
    path_suffix: str


class FakeOanda(ServedApp):
    def __init__(
        self,
        *,
        account_id: str = ACCOUNT_ID,
        token: str = TOKEN,
        transactions: list[dict[str, Any]] | None = None,
        delay_seconds: float = 0.0,
    ) -> None:
        self.account_id = account_id
        self.token = token
        self.delay_seconds = delay_seconds  # per request, to make overlapping requests visible
        self.requests = RequestTally()
        self.id_ranges: list[tuple[int, int]] = []
        self.datetime_formats: set[str] = set()
        self._transactions = list(transactions or [])
        self._failures: list[_Failure] = []
        self._lock = threading.Lock()
        base = "/v3/accounts/{account_id}"
        super().__init__(
            Starlette(
                routes=[
                    Route("/v3/accounts", self._accounts),
                    Route(f"{base}/summary", self._guarded(self._summary)),
                    Route(f"{base}/transactions/idrange", self._guarded(self._idrange)),
                    Route(f"{base}/transactions/sinceid", self._guarded(self._sinceid)),
                    Route(f"{base}/openTrades", self._guarded(self._open_trades)),
                ]
            )
        )

    # What a test changes between polls.

    @property
    def transactions(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._transactions)

    @property
    def last_transaction_id(self) -> int:
        with self._lock:
            return int(self._transactions[-1]["id"]) if self._transactions else 0

    def add_transactions(self, count: int) -> list[dict[str, Any]]:
        added = numbered_transactions(
            count, first_id=self.last_transaction_id + 1, account_id=self.account_id
        )
        with self._lock:
            self._transactions.extend(added)
        return added

    def reset(self, transactions: list[dict[str, Any]] | None = None) -> None:
        """As new, with these transactions: one server can serve many specifications."""
        with self._lock:
            self._transactions = list(transactions or [])
            self._failures.clear()
            self.id_ranges.clear()
        self.requests = RequestTally()
        self.datetime_formats.clear()

    def stop_failing(self) -> None:
        with self._lock:
            self._failures.clear()

    def fail_next(
        self, times: int, status_code: int, *, retry_after: str | None = None, path_suffix: str = ""
    ) -> None:
        """Answer the next `times` requests (to paths ending in `path_suffix`) with this status."""
        with self._lock:
            self._failures.append(_Failure(status_code, times, retry_after, path_suffix))

    # The server side.

    def _guarded(self, handler: Handler) -> Handler:
        async def guarded(request: Request) -> Response:
            account = request.path_params["account_id"]
            with self.requests.request(request.url.path, account):
                if self.delay_seconds:
                    await asyncio.sleep(self.delay_seconds)
                self.datetime_formats.add(request.headers.get("Accept-Datetime-Format", ""))
                if request.headers.get("Authorization") != f"Bearer {self.token}":
                    return _json(
                        {"errorMessage": "Insufficient authorization to perform request."}, 401
                    )
                injected = self._injected_failure(request.url.path)
                if injected is not None:
                    return injected
                if account != self.account_id:
                    return _json({"errorMessage": "The provided request was forbidden."}, 403)
                return await handler(request)

        return guarded

    async def _accounts(self, request: Request) -> Response:
        """The token's accounts (v20 `GET /v3/accounts`): the fake's one account."""
        with self.requests.request(request.url.path, ""):
            if request.headers.get("Authorization") != f"Bearer {self.token}":
                return _json(
                    {"errorMessage": "Insufficient authorization to perform request."}, 401
                )
            injected = self._injected_failure(request.url.path)
            if injected is not None:
                return injected
            return _json({"accounts": [{"id": self.account_id, "tags": []}]})

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
        message = "Rate limit violation" if failure.status_code == 429 else "injected failure"
        return _json({"errorMessage": message}, failure.status_code, headers)

    def _last_id_text(self) -> str:
        return str(self.last_transaction_id)

    async def _summary(self, request: Request) -> Response:
        document = load_sample("account_summary.json")
        document["account"].update(id=self.account_id, lastTransactionID=self._last_id_text())
        document["lastTransactionID"] = self._last_id_text()
        return _json(document)

    async def _idrange(self, request: Request) -> Response:
        try:
            first, last = int(request.query_params["from"]), int(request.query_params["to"])
        except (KeyError, ValueError):
            return _json({"errorMessage": "Invalid value specified for 'from' or 'to'"}, 400)
        if last - first + 1 > MAX_IDRANGE_IDS or last < first:
            return _json({"errorMessage": "The requested range is too large"}, 400)
        with self._lock:
            self.id_ranges.append((first, last))
        chosen = [t for t in self.transactions if first <= int(t["id"]) <= last]
        return _json({"transactions": chosen, "lastTransactionID": self._last_id_text()})

    async def _sinceid(self, request: Request) -> Response:
        try:
            after = int(request.query_params["id"])
        except (KeyError, ValueError):
            return _json({"errorMessage": "Invalid value specified for 'id'"}, 400)
        chosen = [t for t in self.transactions if int(t["id"]) > after][:MAX_IDRANGE_IDS]
        return _json({"transactions": chosen, "lastTransactionID": self._last_id_text()})

    async def _open_trades(self, request: Request) -> Response:
        document = load_sample("trades_list_open.json")
        document["lastTransactionID"] = self._last_id_text()
        return _json(document)
