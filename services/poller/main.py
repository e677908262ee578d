"""The poller entrypoint: waits for Postgres and Kafka, wires them and an HTTP client once, then
polls until told to stop."""

from __future__ import annotations

import asyncio
import contextlib

from services.poller.gauges import PollerGauges
from services.poller.reconciling import run_reconciliations
from services.poller.retry import FailurePolicy
from services.poller.schedule import SyncSchedule
from services.poller.settings import PollerSettings
from services.poller.syncing import ConnectionSync, Poller
from services.shared.dependencies import Dependencies
from services.shared.lifecycle import mark_ready, run_service
from services.shared.logging import get_logger
from services.shared.metrics_server import serve_metrics
from services.shared.outbound_http import outbound_http_client
from services.shared.publishing import RawEventPublisher
from services.shared.reconciling import Reconciler
from services.shared.vault import CredentialVault

_log = get_logger("poscal.poller")


async def serve(settings: PollerSettings, stop: asyncio.Event) -> None:
    async with contextlib.AsyncExitStack() as stack:
        metrics_served = serve_metrics(stack, settings.metrics_host, settings.metrics_port)
        kek = settings.key_ring()  # a key that does not load is configuration: fail at once
        connect = Dependencies(settings, stop, stack)
        pool = await connect.postgres(max_size=settings.concurrency + 2)
        producer = await connect.producer("poscal-poller")
        http = outbound_http_client(settings.broker_timeout_seconds)
        stack.push_async_callback(http.aclose)
        schedule = SyncSchedule(
            pool, settings.owner, settings.lease_seconds, user_limit=settings.user_sync_limit
        )
        vault = CredentialVault(kek)
        sink = RawEventPublisher(producer, settings.topics.raw, settings.publish_timeout_seconds)
        sync = ConnectionSync(
            pool=pool,
            vault=vault,
            schedule=schedule,
            sink=sink,
            http=http,
            retry=FailurePolicy(
                settings.retry_base_seconds,
                settings.retry_cap_seconds,
                settings.failures_before_error,
            ),
        )
        poller = Poller(
            schedule,
            sync.run,
            concurrency=settings.concurrency,
            tick_seconds=settings.tick_seconds,
        )
        if settings.reconcile_interval_hours > 0:
            reconciling = run_reconciliations(
                Reconciler(pool, vault, http, sink),
                stop,
                owner=settings.owner,
                interval_seconds=settings.reconcile_interval_hours * 3600,
                lease_seconds=settings.lease_seconds,
                tick_seconds=max(settings.tick_seconds, 30.0),
            )
            stack.push_async_callback(
                _cancel, asyncio.create_task(reconciling, name="poller-reconciliations")
            )
        mark_ready(settings.ready_file)
        _log.info("poller running", owner=settings.owner, concurrency=settings.concurrency)
        if metrics_served:
            gauges = PollerGauges(pool, schedule, kek.key_id, settings.gauges_seconds)
            stack.push_async_callback(
                _cancel, asyncio.create_task(gauges.run(stop), name="poller-gauges")
            )
        await poller.run(stop)


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def main() -> int:
    settings = PollerSettings()
    return run_service("poller", settings, lambda stop: serve(settings, stop))
