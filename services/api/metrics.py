"""The app API's Prometheus metrics, served on POSCAL_API_METRICS_PORT when set (never on the API's
own port): request latency by route template, method and status."""

from __future__ import annotations

import time

from prometheus_client import Histogram
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

REQUEST_SECONDS = Histogram(
    "poscal_api_request_duration_seconds",
    "Time to answer a request, by method, route template (`/v1/connections/{connection_id}`,"
    " never the concrete path; `unmatched` for no route) and status code",
    ["method", "route", "status"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
UNMATCHED = "unmatched"
# Methods a client may send are any token: only these become label values.
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def route_template(route: BaseRoute | None) -> str:
    """The label of the route the router picked (it leaves it in the scope), or `unmatched`."""
    return route.path if isinstance(route, Route) else UNMATCHED


class RequestMetrics:
    """ASGI middleware, outermost: times each HTTP request to the end of its answer and observes
    it under the route the router matched. Label values come only from the routes, a fixed
    set of methods and the status code, so no request can mint a series."""

    def __init__(self, app: ASGIApp) -> None:
        self._app = app
        self._children: dict[tuple[str, str, int], Histogram] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def observed(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self._app(scope, receive, observed)
        finally:
            method = scope.get("method", "")
            key = (
                method if method in _METHODS else "other",
                route_template(scope.get("route")),
                status,
            )
            child = self._children.get(key)
            if child is None:
                child = self._children[key] = REQUEST_SECONDS.labels(*key[:2], str(status))
            child.observe(time.perf_counter() - started)
