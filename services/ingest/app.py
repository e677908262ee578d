"""The ingest HTTP application: routes, lifespan wiring, and refusals mapped to HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import asyncpg
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from services.ingest.audit import Attempt, AuditTrail
from services.ingest.change_listener import ConnectionChangeListener
from services.ingest.client_ip import IPNetwork, client_address, client_source, parse_networks
from services.ingest.client_refusals import ClientRefusals, client_budget, sender_budget
from services.ingest.connections import ConnectionDirectory, VerifiableConnection
from services.ingest.errors import (
    ClientThrottled,
    IncompleteBody,
    IngestRefusal,
    PayloadTooLarge,
    Unauthorized,
    Unavailable,
    UnsupportedMediaType,
)
from services.ingest.instances import IngestInstance
from services.ingest.metrics import NOT_READY, serve_metrics
from services.ingest.openapi import serve_openapi
from services.ingest.publisher import RawEventPublisher
from services.ingest.rate_limits import WebhookRateLimits
from services.ingest.readiness import DependencyReadiness
from services.ingest.receiver import EventSink, WebhookReceiver
from services.ingest.replays import DeliveryClaims
from services.ingest.request_bounds import InFlightRequests, RequestBounds
from services.ingest.retention import Retention
from services.ingest.settings import IngestSettings
from services.ingest.verification_failures import ThrottlePolicy, VerificationFailures
from services.shared.dependencies import Dependencies
from services.shared.keyring import KeyRing
from services.shared.lifecycle import StoppedWaiting
from services.shared.logging import get_logger
from services.shared.vault import CredentialVault

WEBHOOK_ROUTE = "/v1/webhooks/{broker}/{webhook_path_id}"
_tracer = trace.get_tracer("poscal.ingest")
_log = get_logger("poscal.ingest")


@dataclass
class IngestWiring:
    """What the endpoints use; `wire` builds it from a pool, a vault and a sink."""

    receiver: WebhookReceiver
    audit: AuditTrail
    claims: DeliveryClaims
    refusals: ClientRefusals
    retention: Retention | None = None
    listener: ConnectionChangeListener | None = None
    ready: Callable[[], Awaitable[bool]] = field(default=lambda: _always_ready())
    # Registered at start (before any attempt is answered) when given; see instances.py.
    instance: IngestInstance | None = None


async def _always_ready() -> bool:
    return True


def wire(
    settings: IngestSettings,
    pool: asyncpg.Pool,
    vault: CredentialVault,
    sink: EventSink,
    *,
    listen_for_changes: bool = True,
    ready: Callable[[], Awaitable[bool]] | None = None,
    in_flight: InFlightRequests | None = None,
    instance: IngestInstance | None = None,
) -> IngestWiring:
    directory = ConnectionDirectory(pool, vault, settings.connection_cache_seconds)
    claims = DeliveryClaims(pool, lease_seconds=settings.claim_lease)
    failures = VerificationFailures(
        pool,
        alert_threshold=settings.failure_alert_threshold,
        policy=ThrottlePolicy(
            free=settings.failures_before_throttle,
            cap_seconds=settings.failure_throttle_cap_seconds,
        ),
    )
    receiver = WebhookReceiver(
        connections=directory,
        sink=sink,
        claims=claims,
        failures=failures,
        rate_limits=WebhookRateLimits(
            settings.rate_limit_per_connection, settings.rate_limit_per_user
        ),
        tolerance_seconds=settings.signature_tolerance_seconds,
    )
    listener = None
    if listen_for_changes and settings.connection_cache_seconds > 0:
        listener = ConnectionChangeListener(settings.database_url.get_secret_value(), directory)
    retention = Retention(
        pool,
        replay_window=timedelta(days=settings.replay_window_days),
        attempt_retention=timedelta(days=settings.attempt_retention_days),
    )
    refusals = ClientRefusals(settings.refusals_per_client)
    audit = AuditTrail(
        pool,
        instance_id=instance.instance_id if instance is not None else None,
        oldest_in_flight=in_flight.oldest_began_at if in_flight is not None else lambda: None,
        held=refusals,
        flush_interval_seconds=settings.audit_flush_seconds,
    )
    return IngestWiring(
        receiver=receiver,
        audit=audit,
        claims=claims,
        refusals=refusals,
        retention=retention,
        listener=listener,
        ready=ready or _always_ready,
        instance=instance,
    )


def _is_json(content_type: str | None) -> bool:
    media_type = (content_type or "").split(";", 1)[0].strip().lower()
    return media_type == "application/json" or (
        media_type.startswith("application/") and media_type.endswith("+json")
    )


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    # isascii: str.isdigit() also accepts digits like "²" that int() refuses.
    if declared is not None and declared.isascii() and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge("declared_length_over_limit")
    body = bytearray()
    try:
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise PayloadTooLarge("body_over_limit")  # stop reading: the rest never arrives
    except ClientDisconnect:
        raise IncompleteBody("client_disconnected") from None
    return bytes(body)


def _attempt(request: Request, broker: str, trusted_proxies: tuple[IPNetwork, ...]) -> Attempt:
    peer = request.client.host if request.client else None
    attempt = Attempt(
        broker=broker,
        received_at=datetime.now(UTC),
        # Every X-Forwarded-For line, in order: a proxy may add its own line rather than append.
        client_ip=client_address(
            peer, ",".join(request.headers.getlist("x-forwarded-for")) or None, trusted_proxies
        ),
        user_agent=request.headers.get("user-agent"),
    )
    with contextlib.suppress(ValueError):
        attempt.webhook_path_id = uuid.UUID(request.path_params["webhook_path_id"])
    return attempt


async def receive_webhook(request: Request) -> Response:
    settings: IngestSettings = request.app.state.settings
    wiring: IngestWiring = request.app.state.wiring
    broker = request.path_params["broker"]
    attempt = _attempt(request, broker, request.app.state.trusted_proxies)
    with _tracer.start_as_current_span(
        f"POST {WEBHOOK_ROUTE}",
        kind=SpanKind.SERVER,
        attributes={
            "http.request.method": "POST",
            "http.route": WEBHOOK_ROUTE,
            "poscal.broker": broker,
            "poscal.webhook_path_id": request.path_params["webhook_path_id"],
        },
    ) as span:
        client = client_source(attempt.client_ip)
        try:
            connection = await _connection(wiring, attempt, client)
            if not _is_json(request.headers.get("content-type")):
                raise UnsupportedMediaType("unsupported_media_type")
            body = await _read_body(request, settings.max_body_bytes)
            event = await wiring.receiver.receive(
                attempt, connection, client, request.headers, body
            )
        except IngestRefusal as refusal:
            _refused(wiring, attempt, client, refusal, span)
            raise
        attempt.status_code, attempt.reason = 202, "accepted"
        wiring.audit.record(attempt)
        span.set_attribute("poscal.connection_id", str(attempt.connection_id))
        span.set_attribute("http.response.status_code", 202)
        span.set_attribute("poscal.event_id", str(event.event_id))
        # Every attempt is in webhook_attempts and the trace: at INFO a log line per webhook
        # would cost the front door more than it tells.
        _log.debug(
            "webhook accepted",
            connection_id=str(attempt.connection_id),
            event_id=str(event.event_id),
        )
        return JSONResponse({"status": "accepted", "event_id": str(event.event_id)}, 202)


async def _connection(wiring: IngestWiring, attempt: Attempt, client: str) -> VerifiableConnection:
    """The connection the URL names. For a malformed or unknown URL: 401, or for a client over
    its refusal budget 429 at once (nothing more is read; misses are cached, so this is cheap).
    For a known one the budget stops nothing: the delivery is verified first."""
    connection = await wiring.receiver.find(attempt)
    if connection is not None:
        return connection
    wait = wiring.refusals.wait(client_budget(client))
    if wait is not None:
        raise ClientThrottled("rate_limited_refusals", wait)
    raise Unauthorized("unknown_connection")


def _refused(
    wiring: IngestWiring,
    attempt: Attempt,
    client: str,
    refusal: IngestRefusal,
    span: trace.Span,
) -> None:
    """Audit, trace and log a refusal, and spend a refusal budget for it: the sender's for a
    delivery that verified, else the client address's."""
    attempt.status_code, attempt.reason = refusal.status_code, refusal.reason
    span.set_attribute("http.response.status_code", refusal.status_code)
    span.set_attribute("poscal.refusal_reason", refusal.reason)
    if attempt.connection_id is not None:
        span.set_attribute("poscal.connection_id", str(attempt.connection_id))
    if refusal.status_code >= 500:
        span.set_status(Status(StatusCode.ERROR, refusal.reason))
    if refusal.spends_refusal_budget:
        if refusal.verified:
            assert attempt.connection_id is not None
            budget = sender_budget(client, attempt.connection_id)
        else:
            budget = client_budget(client)
        if not wiring.refusals.refused(budget, attempt):
            return  # folded into its window's one record: no row, no log line of its own
    wiring.audit.record(attempt)
    _log.warning(
        "webhook refused",
        connection_id=str(attempt.connection_id) if attempt.connection_id else None,
        webhook_path_id=str(attempt.webhook_path_id) if attempt.webhook_path_id else None,
        status=refusal.status_code,
        reason=refusal.reason,
    )


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
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "bad_request")
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
                await _start(app, await wiring(stack), stack)
            else:
                kek = settings.key_ring()  # a key that does not load fails start-up at once
                connecting = asyncio.create_task(
                    _connect_and_start(app, settings, kek, in_flight, stack, stop, on_fatal),
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
            Route("/metrics", serve_metrics),
            Route("/openapi.json", serve_openapi),
        ],
        middleware=[
            Middleware(
                RequestBounds,
                max_in_flight=settings.max_concurrent_requests,
                body_timeout_seconds=settings.body_timeout_seconds,
                in_flight=in_flight,
            )
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


async def _start(app: Starlette, active: IngestWiring, stack: contextlib.AsyncExitStack) -> None:
    """Start what runs beside the requests, then take webhooks. Stopping runs in reverse: the
    last attempt records are written before the instance says it stopped cleanly."""
    if active.instance is not None:
        instance, audit = active.instance, active.audit
        active.instance.start()

        async def stop_instance() -> None:
            await instance.stop(clean=audit.all_recorded())

        stack.push_async_callback(stop_instance)
    active.audit.start()
    # Its stop records what is still held back too: the windows of folded refusals still open.
    stack.push_async_callback(active.audit.stop)
    stack.push_async_callback(active.claims.drain)
    if active.retention is not None:
        active.retention.start()
        stack.push_async_callback(active.retention.stop)
    if active.listener is not None:
        await active.listener.start()
        stack.push_async_callback(active.listener.stop)
    app.state.wiring = active


async def _connect_and_start(
    app: Starlette,
    settings: IngestSettings,
    kek: KeyRing,
    in_flight: InFlightRequests,
    stack: contextlib.AsyncExitStack,
    stop: asyncio.Event,
    on_fatal: Callable[[BaseException], None] | None,
) -> None:
    try:
        active = await _connect(settings, kek, in_flight, stack, stop)
        await _start(app, active, stack)
    except StoppedWaiting:
        return
    except Exception as exc:
        # The type and SQLSTATE say which configuration is wrong; a message might quote it.
        _log.error(
            "ingest cannot start", cause=type(exc).__name__, sqlstate=getattr(exc, "sqlstate", None)
        )
        if on_fatal is not None:
            on_fatal(exc)
        return
    _log.info("ingest ready")


async def _no_session_state(_: asyncpg.Connection) -> None:
    return None


def _flush_spans() -> None:
    provider = trace.get_tracer_provider()
    force_flush = getattr(provider, "force_flush", None)
    if force_flush is not None:
        force_flush(5000)


async def _connect(
    settings: IngestSettings,
    kek: KeyRing,
    in_flight: InFlightRequests,
    stack: contextlib.AsyncExitStack,
    stop: asyncio.Event,
) -> IngestWiring:
    """Postgres, then Kafka, then this instance's registration, each waited for."""
    connect = Dependencies(settings, stop, stack)
    pool = await connect.postgres(
        max_size=20,
        # Ingest sets no session state, so a released connection needs no RESET ALL round trip
        # (an open transaction is still rolled back by asyncpg itself).
        reset=_no_session_state,
        # What ingest writes (webhook-id claims, attempt records, failure counts) may lose its
        # last fraction of a second if Postgres itself crashes: a replay slipping through then
        # is the same event id, which every sink absorbs. Not waiting for each WAL flush is
        # what keeps the front door fast.
        server_settings={"synchronous_commit": "off"},
    )
    producer = await connect.producer("poscal-ingest")
    publisher = RawEventPublisher(producer, settings.topics.raw, settings.publish_timeout_seconds)
    instance = IngestInstance(
        settings.database_url.get_secret_value(),
        pool,
        check_every_seconds=settings.instance_check_seconds,
    )
    active = wire(
        settings,
        pool,
        CredentialVault(kek),
        publisher,
        ready=DependencyReadiness(pool, producer),
        in_flight=in_flight,
        instance=instance,
    )
    await connect.with_postgres(instance.register)
    return active
