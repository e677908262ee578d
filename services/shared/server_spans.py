"""OpenTelemetry's ASGI server spans, which no request can turn into an error of its own."""

from __future__ import annotations

from typing import Any

from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

_EXACT_SCOPE = "poscal.exact_scope"


def _readable(value: bytes) -> bytes:
    """The bytes as the instrumentation can decode them: UTF-8 as is, anything else escaped."""
    if value.isascii():
        return value
    return value.decode("utf-8", "backslashreplace").encode()


class ServerSpans:
    """OpenTelemetry's ASGI middleware, given a copy of the scope it can read.

    The instrumentation decodes header bytes as UTF-8, else as `unicode_escape`, and the query
    as UTF-8, and raises on bytes that are neither (a header of 0x80 0x5C is a 500). It reads a
    copy with such bytes escaped; the application gets the exact scope, every byte as sent."""

    def __init__(self, app: ASGIApp, /, **options: Any) -> None:
        self._app = app
        self._traced = OpenTelemetryMiddleware(self._exact, **options)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._traced(scope, receive, send)
            return
        headers = [(_readable(name), _readable(value)) for name, value in scope["headers"]]
        query = _readable(scope.get("query_string", b""))
        if headers == scope["headers"] and query == scope.get("query_string", b""):
            await self._traced(scope, receive, send)
            return
        readable = {**scope, "headers": headers, "query_string": query, _EXACT_SCOPE: scope}
        await self._traced(readable, receive, send)

    async def _exact(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._app(scope.get(_EXACT_SCOPE, scope), receive, send)
