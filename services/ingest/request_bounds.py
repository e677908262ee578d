"""What a slow or greedy client may hold of one ingest process: how many requests are answered at
once, and how long a request's body may take to arrive."""

from __future__ import annotations

import asyncio
import itertools
import time

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.ingest.errors import Overloaded, RequestTimeout
from services.ingest.metrics import OVERLOADED

# Probes answer even when every slot is taken: a busy replica is alive, and says whether it is
# ready itself.
_UNBOUNDED_PATHS = frozenset({"/healthz", "/readyz"})
_OVERLOADED = Overloaded("overloaded")
_OVERLOADED_BODY = orjson.dumps({"error": _OVERLOADED.error, "detail": _OVERLOADED.public_detail})


class InFlightRequests:
    """The requests being answered now, and when (wall clock) each began."""

    def __init__(self) -> None:
        self._began: dict[int, float] = {}
        self._ids = itertools.count()

    def __len__(self) -> int:
        return len(self._began)

    def begin(self) -> int:
        request = next(self._ids)
        self._began[request] = time.time()
        return request

    def end(self, request: int) -> None:
        del self._began[request]

    def oldest_began_at(self) -> float | None:
        """When the longest-running request began (None when there is none)."""
        # Dicts keep insertion order, which is the order requests began in.
        return next(iter(self._began.values()), None)


class RequestBounds:
    """ASGI middleware enforcing both bounds; `in_flight` is shared with the audit trail, which
    must not claim progress past a request still being answered.

    At most `max_in_flight` requests are answered at once (503 with Retry-After beyond, never an
    unbounded queue), and a request's body must have arrived within `body_timeout_seconds` of
    its headers (408, then the connection is closed). Header read and idle keep-alive limits are
    uvicorn's and the proxy's (infra/nginx/)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_in_flight: int,
        body_timeout_seconds: float,
        in_flight: InFlightRequests,
    ) -> None:
        self._app = app
        self._max_in_flight = max_in_flight
        self._body_timeout = body_timeout_seconds
        self._in_flight = in_flight

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in _UNBOUNDED_PATHS:
            await self._app(scope, receive, send)
            return
        if len(self._in_flight) >= self._max_in_flight:
            OVERLOADED.inc()
            await _answer_overloaded(send)
            return
        request = self._in_flight.begin()
        try:
            await self._app(scope, _body_within(receive, self._body_timeout), send)
        finally:
            self._in_flight.end(request)


def _body_within(receive: Receive, timeout_seconds: float) -> Receive:
    """`receive`, raising RequestTimeout once the body is not complete by the deadline. Only
    the body is timed: afterwards `receive` waits for a disconnect, as long as it takes."""
    deadline = asyncio.get_running_loop().time() + timeout_seconds
    body_complete = False

    async def receive_in_time() -> Message:
        nonlocal body_complete
        if body_complete:
            return await receive()
        try:
            async with asyncio.timeout_at(deadline):
                message = await receive()
        except TimeoutError:
            raise RequestTimeout("body_timeout") from None
        if message["type"] != "http.request" or not message.get("more_body", False):
            body_complete = True
        return message

    return receive_in_time


async def _answer_overloaded(send: Send) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": 503,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(_OVERLOADED_BODY)).encode()),
                *((k.lower().encode(), v.encode()) for k, v in _OVERLOADED.headers().items()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": _OVERLOADED_BODY})
