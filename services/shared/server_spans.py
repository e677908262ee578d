"""OpenTelemetry's ASGI server spans, which no request can turn into an error of its own, and which
never carry a credential, a query string or a concrete path as their name."""

from __future__ import annotations

from typing import Any

from opentelemetry import trace
from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
from starlette.routing import Match, Route
from starlette.types import ASGIApp, Receive, Scope, Send

_EXACT_SCOPE = "poscal.exact_scope"
# Headers the instrumentation never sees, whatever OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_*
# asks it to record: they carry credentials (the app API's bearer tokens).
HIDDEN_HEADERS = frozenset({b"authorization", b"proxy-authorization", b"cookie"})


def _readable(value: bytes) -> bytes:
    """The bytes as the instrumentation can decode them: UTF-8 as is, anything else escaped."""
    if value.isascii():
        return value
    return value.decode("utf-8", "backslashreplace").encode()


class ServerSpans:
    """OpenTelemetry's ASGI middleware, given a copy of the scope it can read.

    The instrumentation decodes header bytes as UTF-8, else as `unicode_escape`, and the query
    as UTF-8, and raises on bytes that are neither (a header of 0x80 0x5C is a 500). It reads a
    copy with such bytes escaped and without the credential headers; the application gets the
    exact scope, every byte as sent."""

    def __init__(self, app: ASGIApp, /, **options: Any) -> None:
        self._app = app
        self._traced = OpenTelemetryMiddleware(self._exact, **options)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._traced(scope, receive, send)
            return
        headers = [
            (_readable(name), _readable(value))
            for name, value in scope["headers"]
            if name.lower() not in HIDDEN_HEADERS
        ]
        query = _readable(scope.get("query_string", b""))
        if headers == scope["headers"] and query == scope.get("query_string", b""):
            await self._traced(scope, receive, send)
            return
        readable = {**scope, "headers": headers, "query_string": query, _EXACT_SCOPE: scope}
        await self._traced(readable, receive, send)

    async def _exact(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._app(scope.get(_EXACT_SCOPE, scope), receive, send)


def span_named_by_route(scope: Scope) -> tuple[str, dict[str, str]]:
    """A server span's name and `http.route`: the route's template, never the concrete path (it
    holds ids, which must not become a span name each)."""
    method = scope.get("method", "")
    for route in scope["app"].routes:
        if isinstance(route, Route) and route.matches(scope)[0] is not Match.NONE:
            return f"{method} {route.path}", {"http.route": route.path}
    return method, {}


def without_query(span: trace.Span, scope: Scope) -> None:
    """A request's URL without its query: whatever a client put there (a stray token, a secret)
    must not reach a span."""
    if span.is_recording():
        path = scope.get("path", "")
        host = dict(scope.get("headers") or []).get(b"host", b"").decode("latin-1")
        span.set_attribute("http.target", path)
        span.set_attribute("http.url", f"{scope.get('scheme', 'http')}://{host}{path}")
