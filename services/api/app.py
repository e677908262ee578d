"""The app API's HTTP application: routes, middleware, lifespan, and refusals mapped to HTTP."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

from opentelemetry import trace
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from services.api.bootstrap import ApiWiring, connect_and_start, start
from services.api.dashboard import PAGE_PATH, asset_names, dashboard_routes
from services.api.errors import ApiError, BadRequest, MethodNotAllowed, NotFound
from services.api.metrics import RequestMetrics
from services.api.middleware import (
    BodyLimit,
    JsonCors,
    SecurityHeaders,
    UnexpectedErrors,
    error_response,
)
from services.api.openapi import serve_openapi
from services.api.operations import json_response
from services.api.routes import OPERATIONS
from services.api.settings import ApiSettings
from services.shared.logging import get_logger
from services.shared.server_spans import ServerSpans

_log = get_logger("poscal.api")
# Probes, the document and the dashboard's files are not worth a trace each.
_UNTRACED = (
    "/healthz",
    "/readyz",
    "/openapi.json",
    PAGE_PATH,
    *(f"{PAGE_PATH}/{name}" for name in asset_names()),
)


async def healthz(_: Request) -> Response:
    return json_response({"status": "ok"})


async def readyz(request: Request) -> Response:
    """Ready when started, Postgres answers and the JWKS (if any) was fetched once."""
    wiring: ApiWiring | None = getattr(request.app.state, "wiring", None)
    ready = wiring is not None and await wiring.ready()
    return json_response({"status": "ready" if ready else "unavailable"}, 200 if ready else 503)


async def refusal_to_response(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return error_response(exc)


async def http_error_to_response(_: Request, exc: Exception) -> Response:
    """The router's own refusals (404, 405) in the same JSON shape as ours."""
    assert isinstance(exc, HTTPException)
    refusal: ApiError
    if exc.status_code == 404:
        refusal = NotFound()
    elif exc.status_code == 405:
        refusal = MethodNotAllowed((exc.headers or {}).get("Allow", ""))
    else:
        refusal = BadRequest()
    return error_response(refusal)


def create_app(
    settings: ApiSettings,
    wiring: Callable[[contextlib.AsyncExitStack], Awaitable[ApiWiring]] | None = None,
    *,
    on_fatal: Callable[[BaseException], None] | None = None,
) -> Starlette:
    """The app. By default it serves at once and connects to Postgres in the background,
    waiting while it is away (503 until then). `wiring` instead builds what it uses from parts
    already connected, before serving (tests). `on_fatal` hears of a failure no wait can fix
    (bad credentials): the server should exit."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            connecting: asyncio.Task[None] | None = None
            stop = asyncio.Event()
            if wiring is not None:
                await start(app, await wiring(stack), stack)
            else:
                connecting = asyncio.create_task(
                    connect_and_start(app, settings, stack, stop, on_fatal), name="api-connect"
                )
            try:
                yield
            finally:
                if connecting is not None:
                    stop.set()
                    await connecting  # before the stack closes what it opened
        _log.info("api stopped")
        _flush_spans()  # uvicorn re-raises SIGTERM after shutdown: nothing after it runs in main

    app = Starlette(
        routes=[
            *(operation.route() for operation in OPERATIONS),
            Route("/healthz", healthz),
            Route("/readyz", readyz),
            Route("/openapi.json", serve_openapi),
            *dashboard_routes(),
        ],
        middleware=[
            Middleware(RequestMetrics),
            Middleware(ServerSpans, untraced_paths=_UNTRACED),
            Middleware(SecurityHeaders, hsts_seconds=settings.hsts_seconds),
            # Outside the refusals, so a browser can read a 401 or 429 of an allowed origin.
            Middleware(JsonCors, origins=settings.origins),
            Middleware(UnexpectedErrors),
            Middleware(BodyLimit, max_bytes=settings.max_body_bytes),
        ],
        exception_handlers={
            ApiError: refusal_to_response,
            HTTPException: http_error_to_response,
        },
        lifespan=lifespan,
    )
    app.state.settings = settings
    return app


def _flush_spans() -> None:
    provider = trace.get_tracer_provider()
    force_flush = getattr(provider, "force_flush", None)
    if force_flush is not None:
        force_flush(5000)
