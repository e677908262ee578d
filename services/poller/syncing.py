"""The poller's work: lease due connections up to its concurrency and sync each in its own task
(never two of one connection), publishing each page before its cursor moves."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import random
import time
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NoReturn

import asyncpg
import httpx
from opentelemetry import trace

from services.poller.metrics import ALERTS, PAGES, SYNC_SECONDS, SYNCS
from services.poller.retry import FailurePolicy, retry_delay
from services.poller.schedule import DueSync, Lease, LeaseLost, SyncSchedule
from services.shared import credential_kinds
from services.shared.brokers import adapter_for
from services.shared.brokers.errors import BrokerUnavailable, CredentialsRejected
from services.shared.brokers.polling import AdapterContext, AdapterFactory
from services.shared.crypto import DecryptionFailed
from services.shared.envelope import RawEvent
from services.shared.errors import PermanentError
from services.shared.logging import get_logger
from services.shared.publishing import RawEventSink
from services.shared.vault import CredentialVault

_log = get_logger("poscal.poller")
_tracer = trace.get_tracer("poscal.poller")


class NoCredentials(Exception):
    """Nothing stored to sign in with (any more: it was revoked or expired since the lease)."""


@dataclass(frozen=True)
class BrokerCredential:
    """The opened credential a sync signs in with, and which row it came from."""

    credential_id: uuid.UUID
    secret: bytes

    def __repr__(self) -> str:  # never print the secret
        return f"BrokerCredential({self.credential_id})"


class ConnectionSync:
    """One connection's sync: open the credentials in memory, pull each page of what changed
    since the cursor, publish it, and only then move the cursor, renewing the lease meanwhile.

    A crash between a publish and its cursor save re-polls from the old cursor next time. If
    nothing new arrived in between, that is the same page and the same event id downstream. If
    new transactions did arrive, the re-polled page spans a different window and gets another
    event id: its transactions are published twice, but downstream keys fills per transaction,
    so nothing doubles."""

    def __init__(
        self,
        *,
        pool: asyncpg.Pool,
        vault: CredentialVault,
        schedule: SyncSchedule,
        sink: RawEventSink,
        http: httpx.AsyncClient,
        retry: FailurePolicy,
        jitter: Callable[[], float] = random.random,
        adapters: Callable[[str], AdapterFactory] = adapter_for,
    ) -> None:
        self._pool = pool
        self._vault = vault
        self._schedule = schedule
        self._sink = sink
        self._http = http
        self._retry = retry
        self._jitter = jitter
        self._adapters = adapters

    async def run(self, due: DueSync) -> str:
        """Sync one leased connection; returns the outcome (also recorded in the schedule)."""
        ref = due.connection
        started = time.perf_counter()
        with _tracer.start_as_current_span(
            "poller sync",
            attributes={
                "poscal.connection_id": str(ref.connection_id),
                "poscal.broker": ref.broker,
            },
        ) as span:
            outcome = await self._outcome(due)
            span.set_attribute("poscal.sync_outcome", outcome)
        SYNC_SECONDS.labels(ref.broker, outcome).observe(time.perf_counter() - started)
        SYNCS.labels(ref.broker, outcome).inc()
        return outcome

    async def _outcome(self, due: DueSync) -> str:
        try:
            credential = await self._credential(due)
        except NoCredentials:
            return await self._waiting_for_credentials(due)
        except Exception as exc:  # the database, or a credential that does not open
            return await self._failed(due, exc)
        try:
            pages = await self._under_lease(due, credential.secret)
            await self._schedule.succeeded(due.lease, self._jitter())
        except LeaseLost:
            return self._lease_lost(due)
        except CredentialsRejected as exc:
            return await self._credentials_rejected(due, exc, credential.credential_id)
        except BrokerUnavailable as exc:
            if exc.retry_after is not None and not due.had_error:
                return await self._told_to_wait(due, exc, exc.retry_after)
            return await self._failed(due, exc)
        except Exception as exc:  # every other failure is retried later, with backoff
            return await self._failed(due, exc)
        _log.info("synced", connection_id=str(due.connection.connection_id), pages=pages)
        return "synced"

    async def _under_lease(self, due: DueSync, credentials: bytes) -> int:
        """Pull and publish while a heartbeat renews the lease; if the heartbeat finds the lease
        lost, the pull is cancelled (nothing more published or saved) and LeaseLost raised."""
        work = asyncio.create_task(self._pull_and_publish(due, credentials))
        heartbeat = asyncio.create_task(self._keep_lease(due.lease))
        try:
            await asyncio.wait({work, heartbeat}, return_when=asyncio.FIRST_COMPLETED)
        finally:  # also when this sync is cancelled: neither may outlive it
            for task in (work, heartbeat):
                task.cancel()
            await asyncio.gather(work, heartbeat, return_exceptions=True)
        if work.cancelled():
            heartbeat.result()  # raises what ended the heartbeat: LeaseLost
        return work.result()

    async def _keep_lease(self, lease: Lease) -> NoReturn:
        """Renew the lease until cancelled; LeaseLost once it is someone else's, or once it may
        have run out because the database could not be reached to renew it."""
        renewed = time.monotonic()
        while True:
            await asyncio.sleep(self._schedule.renew_every_seconds)
            try:
                await self._schedule.renew(lease)
            except LeaseLost:
                raise
            except Exception as exc:
                if time.monotonic() - renewed >= self._schedule.lease_seconds:
                    raise LeaseLost(str(lease.connection_id)) from exc
                _log.warning(
                    "cannot renew the lease; trying again",
                    connection_id=str(lease.connection_id),
                    cause=type(exc).__name__,
                )
            else:
                renewed = time.monotonic()

    def _lease_lost(self, due: DueSync) -> str:
        _log.warning(
            "lease lost mid-sync; stopped without writing",
            connection_id=str(due.connection.connection_id),
        )
        return "lease_lost"

    async def _pull_and_publish(self, due: DueSync, credentials: bytes) -> int:
        ref = due.connection
        adapter = self._adapters(ref.broker)(
            AdapterContext(
                connection=ref,
                credentials=credentials,
                api_url=due.api_url,
                http=self._http,
                terminal=due.terminal,
            )
        )
        await adapter.authenticate()
        pages = 0
        async for delta in adapter.fetch_closed_trades(due.cursor):
            event = RawEvent.wrap(
                source="poller",
                connection=ref,
                received_at=datetime.now(UTC),
                delivery_id=delta.delivery_id,
                content_type=delta.content_type,
                body=delta.body,
            )
            await self._sink.publish(event)  # acknowledged by Kafka (acks=all) before...
            await self._schedule.save_cursor(due.lease, delta.next_cursor)  # ...this
            PAGES.labels(ref.broker).inc()
            pages += 1
        return pages

    async def _credential(self, due: DueSync) -> BrokerCredential:
        """The newest active broker credential, active by the database's clock (the one the
        lease was granted by)."""
        async with self._pool.acquire() as conn:
            opened = await self._vault.open_active_rows(
                conn,
                due.connection.connection_id,
                credential_kinds.BROKER_CREDENTIALS,
                await conn.fetchval("SELECT now()"),
            )
        if not opened:
            raise NoCredentials(
                "no broker credentials stored: `poscal-sync connections set-credentials`"
            )
        credential_id, secret = opened[0]
        return BrokerCredential(credential_id, secret)

    async def _waiting_for_credentials(self, due: DueSync) -> str:
        """The credential went (revoked or expired) after the lease: nothing failed, and the
        schedule leases the connection again once one is stored."""
        try:
            await self._schedule.postpone(due.lease, 0)
        except LeaseLost:
            return self._lease_lost(due)
        _log.info(
            "no broker credentials stored; waiting for them",
            connection_id=str(due.connection.connection_id),
        )
        return "waiting_for_credentials"

    async def _credentials_rejected(
        self, due: DueSync, exc: CredentialsRejected, credential_id: uuid.UUID
    ) -> str:
        reason = (
            f"credentials: {exc}; store new ones with `poscal-sync connections set-credentials`"
        )
        try:
            turned = await self._schedule.credentials_rejected(due.lease, credential_id, reason)
        except LeaseLost:
            return self._lease_lost(due)
        _log.error(
            "ALERT broker credentials refused; syncing stops until they are replaced",
            alert="sync_credentials_rejected",
            connection_id=str(due.connection.connection_id),
            broker=due.connection.broker,
            newly_in_error=turned,
        )
        if turned:
            ALERTS.labels("credentials_rejected").inc()
        return "credentials_rejected"

    async def _told_to_wait(self, due: DueSync, exc: BrokerUnavailable, seconds: float) -> str:
        """The broker asked for a pause (a long Retry-After): its call, not a failure of ours.
        Only after an attempt that ended well, though: asked again on the very next attempt
        (or after a failure) it counts as a failure (`_failed`, still waiting at least as long
        as asked), so a broker that keeps refusing still ends in backoff and an alert."""
        reason = _describe(exc)
        try:
            await self._schedule.told_to_wait(due.lease, seconds, reason)
        except LeaseLost:
            return self._lease_lost(due)
        _log.info(
            "the broker asked to wait; trying again then",
            connection_id=str(due.connection.connection_id),
            retry_in_seconds=round(seconds, 1),
        )
        return "told_to_wait"

    async def _failed(self, due: DueSync, exc: Exception) -> str:
        failures = due.consecutive_failures + 1
        retry_after = exc.retry_after if isinstance(exc, BrokerUnavailable) else None
        delay = retry_delay(
            failures, self._retry.base_seconds, self._retry.cap_seconds, self._jitter(), retry_after
        )
        reason = _describe(exc)
        # A permanent failure (a request the broker will always refuse, an account that is not
        # the connection's) needs a person now, not after a few more tries.
        error_after = 0 if isinstance(exc, PermanentError) else self._retry.failures_before_error
        try:
            failures, turned = await self._schedule.failed(due.lease, reason, delay, error_after)
        except LeaseLost:
            return self._lease_lost(due)
        _log.warning(
            "sync failed; retrying later",
            connection_id=str(due.connection.connection_id),
            reason=reason,
            consecutive_failures=failures,
            retry_in_seconds=round(delay, 1),
        )
        if turned:
            ALERTS.labels("repeated_failures").inc()
            _log.error(
                "ALERT connection sync keeps failing; status set to error",
                alert="sync_failing",
                connection_id=str(due.connection.connection_id),
                broker=due.connection.broker,
                consecutive_failures=failures,
                reason=reason,
            )
        return "failed"


def _describe(exc: Exception) -> str:
    """What went wrong, for the connection's last_error: adapters never put secrets in messages."""
    if isinstance(exc, DecryptionFailed):
        return (
            "stored credentials do not decrypt (is the master key the one they were sealed under?)"
        )
    if isinstance(exc, LookupError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"[:500]


class Poller:
    """Leases due connections up to `concurrency` each tick and runs each sync in its own task,
    never two of one connection. On stop, running syncs get `shutdown_grace_seconds` to finish;
    the rest are cancelled, and their leases run out for any replica to take again. How often
    one user's connections sync is held by the lease query (`UserSyncLimit`), across replicas,
    not here."""

    def __init__(
        self,
        schedule: SyncSchedule,
        sync: Callable[[DueSync], Coroutine[Any, Any, str]],
        *,
        concurrency: int,
        tick_seconds: float,
        shutdown_grace_seconds: float = 10.0,
    ) -> None:
        self._schedule = schedule
        self._sync = sync
        self._concurrency = concurrency
        self._tick = tick_seconds
        self._grace = shutdown_grace_seconds
        self._running: dict[uuid.UUID, asyncio.Task[str]] = {}

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self.tick()
            waiters: set[asyncio.Future[object]] = {asyncio.ensure_future(stop.wait())}
            _, pending = await asyncio.wait(
                waiters | set(self._running.values()),
                timeout=self._tick,
                return_when=asyncio.FIRST_COMPLETED,
            )
            for waiter in waiters & pending:
                waiter.cancel()
        await self._finish_running()

    async def tick(self) -> int:
        """Lease and start what is due (as many as there are free slots); returns how many."""
        free = self._concurrency - len(self._running)
        if free <= 0:
            return 0
        try:
            due = await self._schedule.lease_due(free, exclude=frozenset(self._running))
        except Exception as exc:  # the database is away: try again next tick
            _log.warning("cannot lease due connections", cause=type(exc).__name__)
            return 0
        started = 0
        for item in due:
            connection_id = item.connection.connection_id
            if connection_id in self._running:
                # Leased again while a sync of it still runs here (its lease had run out): that
                # sync's writes now fail on the old token; hand the new lease straight back.
                with contextlib.suppress(LeaseLost):
                    await self._schedule.postpone(item.lease, 0)
                continue
            task = asyncio.create_task(self._sync(item), name=f"sync-{connection_id}")
            self._running[connection_id] = task
            task.add_done_callback(functools.partial(self._finished, connection_id))
            started += 1
        return started

    def _finished(self, connection_id: uuid.UUID, task: asyncio.Task[str]) -> None:
        if self._running.get(connection_id) is task:
            del self._running[connection_id]
        if not task.cancelled() and task.exception() is not None:
            _log.error("sync crashed", cause=repr(task.exception()))

    async def drain(self) -> None:
        """Wait for every running sync (tests, and a clean stop)."""
        while self._running:
            await asyncio.wait(set(self._running.values()))

    async def _finish_running(self) -> None:
        if not self._running:
            return
        _, pending = await asyncio.wait(set(self._running.values()), timeout=self._grace)
        for task in pending:  # their leases run out and another replica picks them up
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*pending, return_exceptions=True)
