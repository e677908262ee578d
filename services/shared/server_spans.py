"""The SERVER span of each HTTP request: cheap enough for the webhook front door, safe from any
request bytes, never carrying a credential, a query string or a concrete path as its name."""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence

from opentelemetry import propagate, trace
from opentelemetry.propagators.textmap import Getter
from opentelemetry.trace import SpanKind, Status, StatusCode
from starlette.routing import Match, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# Headers no span ever records, whatever OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_REQUEST
# asks for: they carry credentials (the app API's bearer tokens).
HIDDEN_HEADERS = frozenset({b"authorization", b"proxy-authorization", b"cookie"})
CAPTURE_HEADERS_ENV = "OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_REQUEST"

_tracer = trace.get_tracer("poscal.http")


def _text(value: bytes) -> str:
    """Header bytes as text, whatever they are: UTF-8 as is, anything else escaped."""
    return value.decode("utf-8", "backslashreplace")


class _HeaderGetter(Getter[Sequence[tuple[bytes, bytes]]]):
    """W3C trace context from the raw ASGI headers (names are lower case there)."""

    def get(self, carrier: Sequence[tuple[bytes, bytes]], key: str) -> list[str] | None:
        wanted = key.lower().encode("latin-1")
        values = [_text(value) for name, value in carrier if name == wanted]
        return values or None

    def keys(self, carrier: Sequence[tuple[bytes, bytes]]) -> list[str]:
        return [_text(name) for name, _ in carrier]


_GETTER = _HeaderGetter()


def span_named_by_route(scope: Scope) -> tuple[str, str | None]:
    """A server span's name and `http.route`: the route's template, never the concrete path (it
    holds ids, which must not become a span name each)."""
    method = scope.get("method", "")
    for route in scope["app"].routes:
        if isinstance(route, Route) and route.matches(scope)[0] is not Match.NONE:
            return f"{method} {route.path}", route.path
    return method, None


def _captured_header_patterns(names: Iterable[str] | None) -> re.Pattern[str] | None:
    """What OpenTelemetry's HTTP instrumentations read from CAPTURE_HEADERS_ENV: comma-separated
    header names or regular expressions, matched whole and case-insensitively."""
    if names is None:
        names = os.environ.get(CAPTURE_HEADERS_ENV, "").split(",")
    parts = [name.strip() for name in names if name.strip()]
    if not parts:
        return None
    return re.compile("|".join(f"(?:{part})" for part in parts), re.IGNORECASE)


class ServerSpans:
    """ASGI middleware: one SERVER span per HTTP request, continuing the caller's W3C trace
    context, named `METHOD /route/{template}`, with the old HTTP semantic conventions' request
    attributes (no query anywhere), its status code, and an error status for a 5xx or an
    exception.

    Written here rather than taken from OpenTelemetry's ASGI instrumentation, which cost more
    CPU per request than the whole minimal webhook endpoint (bench/ingest_overhead.py), and
    which raised on header bytes that were neither UTF-8 nor `unicode_escape`. The application
    always gets the exact scope, every byte as sent; what the span records is decoded safely,
    and the credential headers are never recorded."""

    def __init__(
        self,
        app: ASGIApp,
        /,
        *,
        untraced_paths: Iterable[str] = (),
        capture_request_headers: Iterable[str] | None = None,
    ) -> None:
        self._app = app
        self._untraced = frozenset(untraced_paths)
        self._captured = _captured_header_patterns(capture_request_headers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self._untraced:
            await self._app(scope, receive, send)
            return
        name, route = span_named_by_route(scope)
        parent = propagate.extract(scope["headers"], getter=_GETTER)
        span = _tracer.start_span(name, context=parent, kind=SpanKind.SERVER)
        if span.is_recording():
            span.set_attributes(self._request_attributes(scope, route))

        async def send_traced(message: Message) -> None:
            if message["type"] == "http.response.start":
                status = int(message["status"])
                span.set_attribute("http.status_code", status)
                if status >= 500:
                    span.set_status(Status(StatusCode.ERROR))
            await send(message)

        with trace.use_span(span, end_on_exit=True):
            await self._app(scope, receive, send_traced)

    def _request_attributes(self, scope: Scope, route: str | None) -> dict[str, str | int]:
        path = scope.get("path", "")
        scheme = scope.get("scheme", "http")
        host = ""
        user_agent = None
        for header, value in scope["headers"]:
            if header == b"host":
                host = _text(value)
            elif header == b"user-agent":
                user_agent = _text(value)
        attributes: dict[str, str | int] = {
            "http.method": scope.get("method", ""),
            "http.scheme": scheme,
            "http.flavor": scope.get("http_version", ""),
            "http.host": host,
            "http.target": path,
            "http.url": f"{scheme}://{host}{path}",
        }
        if route is not None:
            attributes["http.route"] = route
        if user_agent is not None:
            attributes["http.user_agent"] = user_agent
        server, client = scope.get("server"), scope.get("client")
        if server:
            attributes["net.host.port"] = server[1]
        if client:
            attributes["net.peer.ip"], attributes["net.peer.port"] = client[0], client[1]
        if self._captured is not None:
            attributes |= self._captured_headers(scope["headers"])
        return attributes

    def _captured_headers(self, headers: Iterable[tuple[bytes, bytes]]) -> dict[str, str]:
        assert self._captured is not None
        captured: dict[str, list[str]] = {}
        for raw_name, value in headers:
            name = _text(raw_name).lower()
            if raw_name.lower() in HIDDEN_HEADERS or not self._captured.fullmatch(name):
                continue
            captured.setdefault(f"http.request.header.{name.replace('-', '_')}", []).append(
                _text(value)
            )
        return {key: ",".join(values) for key, values in captured.items()}
