"""Ingest's composition root: what serves webhooks, built once from settings (connected to
Postgres and Kafka, waiting while either is away) and started beside the requests."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta

import asyncpg
from starlette.applications import Starlette

from services.ingest.audit import AuditTrail
from services.ingest.change_listener import ConnectionChangeListener
from services.ingest.client_refusals import ClientRefusals
from services.ingest.connections import ConnectionDirectory
from services.ingest.instances import IngestInstance
from services.ingest.rate_limits import WebhookRateLimits
from services.ingest.readiness import DependencyReadiness
from services.ingest.replays import DeliveryClaims
from services.ingest.request_bounds import InFlightRequests
from services.ingest.retention import Retention
from services.ingest.settings import IngestSettings
from services.ingest.verification_failures import ThrottlePolicy, VerificationFailures
from services.ingest.webhooks import WebhookReceiver
from services.shared.dependencies import Dependencies
from services.shared.keyring import KeyRing
from services.shared.lifecycle import StoppedWaiting
from services.shared.logging import get_logger
from services.shared.publishing import RawEventPublisher, RawEventSink
from services.shared.vault import CredentialVault

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
    sink: RawEventSink,
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


async def start(app: Starlette, active: IngestWiring, stack: contextlib.AsyncExitStack) -> None:
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


async def connect_and_start(
    app: Starlette,
    settings: IngestSettings,
    kek: KeyRing,
    in_flight: InFlightRequests,
    stack: contextlib.AsyncExitStack,
    stop: asyncio.Event,
    on_fatal: Callable[[BaseException], None] | None,
) -> None:
    """Connect (waiting out Postgres or Kafka while away), then start: the app's background
    start-up. A failure no wait can fix goes to `on_fatal` (the server should exit)."""
    try:
        active = await _connect(settings, kek, in_flight, stack, stop)
        await start(app, active, stack)
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
