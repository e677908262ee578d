"""What wraps every answer of the API: security headers, CORS for configured origins only, the
body size limit, and the last resort that turns an unexpected exception into a JSON 500."""

from __future__ import annotations

from collections.abc import Sequence

import orjson
from starlette.datastructures import Headers
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.api.errors import ApiError, BadRequest, InternalError, PayloadTooLarge
from services.shared.logging import get_logger

_log = get_logger("poscal.api")


def _security_headers(hsts_seconds: int) -> list[tuple[bytes, bytes]]:
    headers = {
        # JSON only: nothing here is ever a document, a frame, a script or a style.
        "content-security-policy": "default-src 'none'; frame-ancestors 'none'; base-uri 'none'",
        "x-content-type-options": "nosniff",
        "x-frame-options": "DENY",
        "referrer-policy": "no-referrer",
        "cross-origin-opener-policy": "same-origin",
        # Answers are per user: no cache, shared or the browser's, keeps one.
        "cache-control": "no-store",
    }
    if hsts_seconds:
        headers["strict-transport-security"] = f"max-age={hsts_seconds}; includeSubDomains"
    return [(k.encode(), v.encode()) for k, v in headers.items()]


class SecurityHeaders:
    """Adds the security headers to every response, whoever produced it (a refusal, CORS,
    the router), unless the response set one itself."""

    def __init__(self, app: ASGIApp, *, hsts_seconds: int) -> None:
        self._app = app
        self._headers = _security_headers(hsts_seconds)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                present = {name.lower() for name, _ in message.get("headers", [])}
                message["headers"] = [
                    *message.get("headers", []),
                    *((n, v) for n, v in self._headers if n not in present),
                ]
            await send(message)

        await self._app(scope, receive, with_headers)


class JsonCors(CORSMiddleware):
    """Starlette's CORS for the configured origins, its refused preflight in the API's one JSON
    error shape (Starlette answers it in plain text)."""

    def __init__(self, app: ASGIApp, *, origins: Sequence[str]) -> None:
        super().__init__(
            app,
            allow_origins=list(origins),
            allow_methods=["GET", "POST", "PATCH", "PUT", "DELETE"],
            # Bearer tokens travel in Authorization, never in cookies: no credentials mode.
            allow_headers=["authorization", "content-type"],
            allow_credentials=False,
            expose_headers=["retry-after", "www-authenticate"],
            max_age=600,
        )

    def preflight_response(self, request_headers: Headers) -> Response:
        response = super().preflight_response(request_headers)
        if response.status_code < 400:
            return response
        refused = BadRequest()
        return error_response(refused, extra={"Vary": "Origin"})


def error_response(error: ApiError, extra: dict[str, str] | None = None) -> Response:
    return Response(
        orjson.dumps(error.body()),
        error.status_code,
        headers={**error.headers(), **(extra or {})},
        media_type="application/json",
    )


class BodyLimit:
    """A body over `max_bytes` is refused (413) without reading past the limit: at once when
    its Content-Length says so, else once the bytes received pass it (the read stops there)."""

    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        self._app = app
        self._max = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length")
        if declared is not None and (not declared.isascii() or not declared.isdigit()):
            await error_response(BadRequest())(scope, receive, send)
            return
        if declared is not None and int(declared) > self._max:
            await error_response(PayloadTooLarge(), extra={"Connection": "close"})(
                scope, receive, send
            )
            return
        received = 0

        async def bounded() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self._max:
                    raise PayloadTooLarge()
            return message

        await self._app(scope, bounded, send)


class UnexpectedErrors:
    """The last resort, inside the security headers and CORS so its answer has them too: an
    exception no handler mapped is logged by type (its message may quote data) and answered
    500 in the one JSON shape, saying nothing about it."""

    def __init__(self, app: ASGIApp) -> None:
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        started = False

        async def tracking(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self._app(scope, receive, tracking)
        except Exception as exc:
            _log.error(
                "request failed",
                cause=type(exc).__name__,
                sqlstate=getattr(exc, "sqlstate", None),
                exc_info=False,
            )
            if started:
                raise  # the answer is on its way: only the server can end it now
            await error_response(InternalError())(scope, receive, send)
