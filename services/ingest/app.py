"""The ingest HTTP application: routes, middleware, lifespan, and refusals mapped to HTTP."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

from opentelemetry import trace
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from services.ingest.bootstrap import IngestWiring, connect_and_start, start
from services.ingest.errors import ROUTER_ERRORS, IngestRefusal, Unavailable
from services.ingest.metrics import NOT_READY, metrics_endpoint
from services.ingest.openapi import serve_openapi
from services.ingest.request_bounds import InFlightRequests, RequestBounds
from services.ingest.settings import IngestSettings
from services.ingest.webhooks import WEBHOOK_ROUTE, receive_webhook
from services.shared.client_ip import parse_networks
from services.shared.logging import get_logger
from services.shared.server_spans import ServerSpans

_log = get_logger("poscal.ingest")
# Probes and scrapes are not worth a trace each.
_UNTRACED = ("/healthz", "/readyz", "/metrics", "/openapi.json")


async def healthz(_: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    """Ready when started and both Postgres and Kafka answer: a load balancer's signal."""
    wiring: IngestWiring | None = getattr(request.app.state, "wiring", None)
    ready = wiring is not None and await wiring.ready()
    return JSONResponse({"status": "ready" if ready else "unavailable"}, 200 if ready else 503)


async def refusal_to_response(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, IngestRefusal)
    return JSONResponse(
        {"error": exc.error, "detail": exc.public_detail}, exc.status_code, headers=exc.headers()
    )


async def http_error_to_response(_: Request, exc: Exception) -> Response:
    """Starlette's own refusals (404, 405) in the same JSON shape as ours."""
    assert isinstance(exc, HTTPException)
    code = ROUTER_ERRORS.get(exc.status_code, "bad_request")
    return JSONResponse(
        {"error": code, "detail": str(exc.detail)}, exc.status_code, headers=exc.headers
    )


def _once_started(endpoint: Callable[[Request], Awaitable[Response]]) -> Route:
    """The webhook route, answering 503 with Retry-After until ingest is wired (Postgres and
    Kafka reachable): nothing is published or audited before then."""

    async def guarded(request: Request) -> Response:
        if getattr(request.app.state, "wiring", None) is None:
            NOT_READY.inc()
            raise Unavailable("not_ready")
        return await endpoint(request)

    return Route(WEBHOOK_ROUTE, guarded, methods=["POST"])


def create_app(
    settings: IngestSettings,
    wiring: Callable[[contextlib.AsyncExitStack], Awaitable[IngestWiring]] | None = None,
    *,
    on_fatal: Callable[[BaseException], None] | None = None,
) -> Starlette:
    """The app. By default it serves at once and connects to Postgres and Kafka in the
    background, waiting out either while it is away (not ready until both answer). `wiring`
    instead builds what it uses from parts already connected, before serving (tests).
    `on_fatal` hears of a failure no wait can fix (bad credentials): the server should exit."""
    in_flight = InFlightRequests()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            connecting: asyncio.Task[None] | None = None
            stop = asyncio.Event()
            if wiring is not None:
                await start(app, await wiring(stack), stack)
            else:
                kek = settings.key_ring()  # a key that does not load fails start-up at once
                connecting = asyncio.create_task(
                    connect_and_start(app, settings, kek, in_flight, stack, stop, on_fatal),
                    name="ingest-connect",
                )
            try:
                yield
            finally:
                if connecting is not None:
                    stop.set()
                    await connecting  # before the stack closes what it opened
        _log.info("ingest stopped")
        # uvicorn re-raises SIGTERM once it has shut down, so nothing after it runs in main:
        # export the last spans here.
        _flush_spans()

    app = Starlette(
        routes=[
            _once_started(receive_webhook),
            Route("/healthz", healthz),
            Route("/readyz", readyz),
            Route("/metrics", metrics_endpoint),
            Route("/openapi.json", serve_openapi),
        ],
        middleware=[
            # The server span of each request (server_spans.py: safe from any header, named by
            # its route, cheap enough for the front door).
            Middleware(ServerSpans, untraced_paths=_UNTRACED),
            Middleware(
                RequestBounds,
                max_in_flight=settings.max_concurrent_requests,
                body_timeout_seconds=settings.body_timeout_seconds,
                in_flight=in_flight,
            ),
        ],
        exception_handlers={
            IngestRefusal: refusal_to_response,
            HTTPException: http_error_to_response,
        },
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.trusted_proxies = parse_networks(settings.trusted_proxies)
    return app


def _flush_spans() -> None:
    provider = trace.get_tracer_provider()
    force_flush = getattr(provider, "force_flush", None)
    if force_flush is not None:
        force_flush(5000)
