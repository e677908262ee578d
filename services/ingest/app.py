"""The ingest HTTP application: routes, lifespan wiring, and refusals mapped to HTTP."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from services.ingest.connections import ConnectionDirectory
from services.ingest.errors import IngestRefusal, PayloadTooLarge
from services.ingest.publisher import RawEventPublisher
from services.ingest.receiver import ConnectionLookup, EventSink, WebhookReceiver
from services.ingest.settings import IngestSettings
from services.shared.crypto import LocalKeyEncryptionKey
from services.shared.database import create_pool
from services.shared.kafka import create_producer
from services.shared.logging import get_logger
from services.shared.vault import CredentialVault

WEBHOOK_ROUTE = "/v1/webhooks/{broker}/{connection_id}"
_tracer = trace.get_tracer("poscal.ingest")
_log = get_logger("poscal.ingest")


@dataclass
class IngestWiring:
    """What the endpoints use; the lifespan builds the real one, tests may pass fakes."""

    connections: ConnectionLookup
    sink: EventSink
    ready: Callable[[], Awaitable[bool]] = field(default=lambda: _always_ready())


async def _always_ready() -> bool:
    return True


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge("declared_length_over_limit")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise PayloadTooLarge("body_over_limit")  # stop reading: the rest never arrives
    return bytes(body)


async def receive_webhook(request: Request) -> Response:
    settings: IngestSettings = request.app.state.settings
    receiver: WebhookReceiver = request.app.state.receiver
    broker = request.path_params["broker"]
    connection_id = request.path_params["connection_id"]
    with _tracer.start_as_current_span(
        f"POST {WEBHOOK_ROUTE}",
        kind=SpanKind.SERVER,
        attributes={
            "http.request.method": "POST",
            "http.route": WEBHOOK_ROUTE,
            "poscal.broker": broker,
            "poscal.connection_id": connection_id,
        },
    ) as span:
        try:
            body = await _read_body(request, settings.max_body_bytes)
            event = await receiver.receive(broker, connection_id, request.headers, body)
        except IngestRefusal as refusal:
            span.set_attribute("http.response.status_code", refusal.status_code)
            span.set_attribute("poscal.refusal_reason", refusal.reason)
            if refusal.status_code >= 500:
                span.set_status(Status(StatusCode.ERROR, refusal.reason))
            _log.warning(
                "webhook refused",
                connection_id=connection_id,
                status=refusal.status_code,
                reason=refusal.reason,
            )
            raise
        span.set_attribute("http.response.status_code", 202)
        span.set_attribute("poscal.event_id", str(event.event_id))
        _log.info("webhook accepted", connection_id=connection_id, event_id=str(event.event_id))
        return JSONResponse({"status": "accepted", "event_id": str(event.event_id)}, 202)


async def healthz(_: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    """Ready when started and both Postgres and Kafka answer: a load balancer's signal."""
    wiring: IngestWiring | None = getattr(request.app.state, "wiring", None)
    ready = wiring is not None and await wiring.ready()
    return JSONResponse({"status": "ready" if ready else "unavailable"}, 200 if ready else 503)


async def refusal_to_response(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, IngestRefusal)
    headers = {"Retry-After": "5"} if exc.status_code == 503 else None
    return JSONResponse(
        {"error": exc.error, "detail": exc.public_detail}, exc.status_code, headers=headers
    )


def create_app(settings: IngestSettings, wiring: IngestWiring | None = None) -> Starlette:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            active = wiring
            if active is None:
                active = await _build_wiring(settings, stack)
            app.state.wiring = active
            app.state.receiver = WebhookReceiver(
                active.connections, active.sink, settings.signature_tolerance_seconds
            )
            yield

    app = Starlette(
        routes=[
            Route(WEBHOOK_ROUTE, receive_webhook, methods=["POST"]),
            Route("/healthz", healthz),
            Route("/readyz", readyz),
        ],
        exception_handlers={IngestRefusal: refusal_to_response},
        lifespan=lifespan,
    )
    app.state.settings = settings
    return app


async def _build_wiring(settings: IngestSettings, stack: contextlib.AsyncExitStack) -> IngestWiring:
    kek = LocalKeyEncryptionKey.from_base64(settings.master_key.get_secret_value())
    pool = await create_pool(settings.database_url.get_secret_value(), max_size=10)
    stack.push_async_callback(pool.close)
    producer = create_producer(settings.kafka_bootstrap_servers, client_id="poscal-ingest")
    await producer.start()
    stack.push_async_callback(producer.stop)
    directory = ConnectionDirectory(pool, CredentialVault(kek), settings.connection_cache_seconds)
    publisher = RawEventPublisher(producer, settings.topics.raw, settings.publish_timeout_seconds)

    async def ready() -> bool:
        try:
            await asyncio.wait_for(pool.fetchval("SELECT 1"), 2)
        except Exception:
            return False
        return bool(producer.client.cluster.brokers())

    return IngestWiring(connections=directory, sink=publisher, ready=ready)
