"""A connection's cloud terminal (MetaApi, for MT5): provisioning it from the credentials in the
vault, waiting (bounded, with progress) until it is deployed and connected, then scheduling it."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from services.shared.brokers import UnknownBroker, broker
from services.shared.brokers.polling import CloudTerminal
from services.shared.brokers.provisioning import (
    ProvisioningError,
    ProvisioningUnavailable,
    TerminalRequest,
    TerminalService,
    TerminalStatus,
)
from services.shared.connection_admin.connections import (
    ConnectionNotFound,
    ConnectionRefused,
    schedule_connection,
)
from services.shared.credential_kinds import BROKER_CREDENTIALS
from services.shared.database import Connection
from services.shared.envelope import ConnectionRef
from services.shared.vault import CredentialVault

# Which terminal service a broker's connections use (by broker name); None for a broker without.
TerminalServices = Callable[[str], TerminalService | None]
Sleep = Callable[[float], Awaitable[None]]


@dataclass(frozen=True)
class Progress:
    """One step of provisioning, for a person watching: `step` for the program, `detail` to read."""

    step: str  # creating, validating, replacing, deploying, connecting, checking, ready
    detail: str
    state: str | None = None
    connection_status: str | None = None


@dataclass(frozen=True)
class ProvisioningLimits:
    # How long one provisioning run may wait for the terminal in all. MetaApi deploys in a
    # minute or two; a run that times out can be started again and picks up where it was.
    timeout_seconds: float = 600.0
    # How often the terminal's state is asked while waiting.
    poll_seconds: float = 5.0


@dataclass(frozen=True)
class ProvisionedTerminal:
    connection_id: uuid.UUID
    terminal: CloudTerminal
    account: dict[str, Any]  # the account as the terminal sees it: the wizard's preview
    ready_at: datetime


def registered_services(http: Any) -> TerminalServices:
    """The terminal services of the broker plug-ins (`Broker.terminals`), over `http`."""

    def service(name: str) -> TerminalService | None:
        try:
            factory = broker(name).terminals
        except UnknownBroker:
            return None
        return None if factory is None else factory(http)

    return service


def _no_progress(_: Progress) -> None:
    return None


@dataclass(frozen=True)
class _Target:
    ref: ConnectionRef
    lifecycle: str


async def _target(conn: Connection, connection_id: uuid.UUID) -> _Target:
    row = await conn.fetchrow(
        "SELECT id, user_id, account_id, broker, connection_type, account_number, server,"
        " lifecycle FROM mt5_connections WHERE id = $1",
        connection_id,
    )
    if row is None:
        raise ConnectionNotFound(connection_id)
    if row["lifecycle"] == "revoked":
        raise ConnectionRefused(f"connection {connection_id} is revoked")
    ref = ConnectionRef.from_row(row)
    return _Target(ref, row["lifecycle"])


def _service(services: TerminalServices, broker_name: str) -> TerminalService:
    service = services(broker_name)
    if service is None:
        raise ConnectionRefused(f"{broker_name} connections have no cloud terminal to provision")
    return service


class _Watch:
    """The run's deadline and its progress reports, a report only when something changed."""

    def __init__(
        self,
        limits: ProvisioningLimits,
        progress: Callable[[Progress], None],
        sleep: Sleep,
        monotonic: Callable[[], float],
    ) -> None:
        self._limits = limits
        self._progress = progress
        self._sleep = sleep
        self._monotonic = monotonic
        self._deadline = monotonic() + limits.timeout_seconds
        self._last: Progress | None = None

    def report(self, step: Progress) -> None:
        if step != self._last:
            self._last = step
            self._progress(step)

    def left(self) -> float:
        return self._deadline - self._monotonic()

    async def wait(self, seconds: float | None, timed_out: Callable[[], ProvisioningError]) -> None:
        """Sleep `seconds` (default: the poll interval), or raise `timed_out()` if the deadline
        comes first."""
        wanted = self._limits.poll_seconds if seconds is None else seconds
        if self.left() <= 0 or wanted > self.left():
            raise timed_out()
        await self._sleep(wanted)


async def provision_connection(
    conn: Connection,
    vault: CredentialVault,
    connection_id: uuid.UUID,
    services: TerminalServices,
    *,
    poll_interval_seconds: int = 60,
    limits: ProvisioningLimits | None = None,
    progress: Callable[[Progress], None] = _no_progress,
    sleep: Sleep = asyncio.sleep,
    monotonic: Callable[[], float] = time.monotonic,
) -> ProvisionedTerminal:
    """Make the connection's terminal from its stored sign-in, start it, wait until it runs and
    is connected to the broker, check the account is the connection's and of its type, and put
    the connection on the poller's schedule. Run again, it picks up where the last run stopped
    (one creation per transaction id: never a second terminal); after `set-credentials` it
    replaces the terminal with one made from the new credentials.

    ConnectionRefused for what the operator must fix here (no such connection, no credentials
    stored); ProvisioningError (its `code` and `message`) for what the wizard shows the user.
    Nothing waits inside a database transaction."""
    watch = _Watch(limits or ProvisioningLimits(), progress, sleep, monotonic)
    target = await _target(conn, connection_id)
    service = _service(services, target.ref.broker)
    opened = await vault.open_active_rows(
        conn, connection_id, BROKER_CREDENTIALS, await conn.fetchval("SELECT now()")
    )
    if not opened:
        raise ConnectionRefused(
            f"connection {connection_id} has no credentials to sign in with: store the login,"
            " investor password and server first (`poscal-sync connections set-credentials`)"
        )
    credential_id, credentials = opened[0]
    row = await _terminal_row(conn, service, target.ref, credential_id, watch)
    request = TerminalRequest(
        connection=target.ref,
        credentials=credentials,
        name=f"PosCal {connection_id}",
        transaction_id=row["transaction_id"],
    )
    try:
        account_id = row["remote_account_id"] or await _create(conn, service, request, watch)
        watch.report(Progress("deploying", "starting the cloud terminal"))
        await service.deploy(account_id, request)
        status = await _connected(conn, service, account_id, request, watch)
        watch.report(Progress("checking", "reading the account through the terminal"))
        account = await service.check_account(status.terminal, request)
    except ProvisioningError as exc:
        await conn.execute(
            "UPDATE cloud_terminals SET last_error = $2, updated_at = now()"
            " WHERE connection_id = $1",
            connection_id,
            f"{exc.code}: {exc.message}"[:500],
        )
        raise
    async with conn.transaction():
        ready_at: datetime = await conn.fetchval(
            "UPDATE cloud_terminals SET ready_at = now(), region = $2, last_error = NULL,"
            " updated_at = now() WHERE connection_id = $1 RETURNING ready_at",
            connection_id,
            status.terminal.region,
        )
        await schedule_connection(conn, connection_id, poll_interval_seconds)
        # First sync at once: the user is watching the wizard for their history.
        await conn.execute(
            "UPDATE sync_schedule SET next_sync_at = now(), updated_at = now()"
            " WHERE connection_id = $1",
            connection_id,
        )
    watch.report(Progress("ready", "the terminal is connected; syncing starts now", status.state))
    return ProvisionedTerminal(connection_id, status.terminal, account, ready_at)


async def _terminal_row(
    conn: Connection,
    service: TerminalService,
    ref: ConnectionRef,
    credential_id: uuid.UUID,
    watch: _Watch,
) -> asyncpg.Record:
    """The connection's terminal row: new, as it was (same credentials: carry on), or reset
    once the terminal made from replaced credentials is removed at the service."""
    connection_id = ref.connection_id
    row = await conn.fetchrow(
        "SELECT * FROM cloud_terminals WHERE connection_id = $1", connection_id
    )
    if row is not None and row["removing_at"] is not None:
        raise ConnectionRefused(f"connection {connection_id} is being deleted")
    if row is not None and row["credential_id"] == credential_id:
        return row
    if row is not None and row["remote_account_id"] is not None:
        watch.report(Progress("replacing", "removing the terminal made with the old credentials"))
        await service.remove(row["remote_account_id"])
    created = await conn.fetchrow(
        "INSERT INTO cloud_terminals (connection_id, user_id, provider, transaction_id,"
        " credential_id) VALUES ($1, $2, $3, $4, $5)"
        " ON CONFLICT (connection_id) DO UPDATE SET provider = EXCLUDED.provider,"
        " transaction_id = EXCLUDED.transaction_id, credential_id = EXCLUDED.credential_id,"
        " remote_account_id = NULL, region = NULL, state = NULL, connection_status = NULL,"
        " ready_at = NULL, last_error = NULL, updated_at = now()"
        # A run that started at the same time wrote the row for these credentials first: its
        # transaction id is the one to create with, or there would be two terminals.
        " WHERE cloud_terminals.credential_id IS DISTINCT FROM EXCLUDED.credential_id"
        " RETURNING *",
        connection_id,
        ref.user_id,
        service.provider,
        # MetaApi asks for a random 32-character id per creation, reused to ask for its outcome.
        secrets.token_hex(16),
        credential_id,
    )
    if created is None:
        created = await conn.fetchrow(
            "SELECT * FROM cloud_terminals WHERE connection_id = $1", connection_id
        )
    assert created is not None
    return created


@dataclass(frozen=True)
class VerifiedTerminal:
    """A terminal made for a sign-in before any connection exists (the wizard's verification):
    running, connected, its account checked."""

    terminal: CloudTerminal
    state: str
    connection_status: str
    account: dict[str, Any]


async def provision_terminal(
    service: TerminalService,
    request: TerminalRequest,
    *,
    limits: ProvisioningLimits | None = None,
    progress: Callable[[Progress], None] = _no_progress,
    sleep: Sleep = asyncio.sleep,
    monotonic: Callable[[], float] = time.monotonic,
) -> VerifiedTerminal:
    """`provision_connection`'s steps for a sign-in not stored anywhere yet (nothing is
    written): create, deploy, wait until connected, check the account is the one entered and of
    its type. On any failure the terminal made is removed before the ProvisioningError goes on,
    so a sign-in that did not verify leaves nothing running (and billed)."""
    watch = _Watch(limits or ProvisioningLimits(), progress, sleep, monotonic)
    account_id: str | None = None
    try:
        account_id = await _create(None, service, request, watch)
        watch.report(Progress("deploying", "starting the cloud terminal"))
        await service.deploy(account_id, request)
        status = await _connected(None, service, account_id, request, watch)
        watch.report(Progress("checking", "reading the account through the terminal"))
        account = await service.check_account(status.terminal, request)
    except BaseException:
        if account_id is not None:
            with contextlib.suppress(ProvisioningError):
                await service.remove(account_id)
        raise
    watch.report(Progress("ready", "the terminal is connected", status.state))
    return VerifiedTerminal(status.terminal, status.state, status.connection_status, account)


async def _create(
    conn: Connection | None, service: TerminalService, request: TerminalRequest, watch: _Watch
) -> str:
    """Create the terminal, asking again (same transaction id) while the service validates."""
    watch.report(Progress("creating", "creating the cloud terminal"))
    while True:
        creation = await service.create(request)
        if creation.account_id is not None and conn is not None:
            kept = await conn.fetchval(
                "UPDATE cloud_terminals SET remote_account_id = $2, updated_at = now()"
                " WHERE connection_id = $1 AND removing_at IS NULL AND transaction_id = $3"
                " RETURNING true",
                request.connection.connection_id,
                creation.account_id,
                request.transaction_id,
            )
            if not kept:
                # The connection was deleted, or provisioned again from new credentials, while
                # the terminal was being made: nobody else knows of it, so it is removed here,
                # or it would run (billed) unknown.
                await service.remove(creation.account_id)
                raise ConnectionRefused(
                    f"connection {request.connection.connection_id} was deleted or provisioned"
                    " again meanwhile; the terminal this run made for it is removed"
                )
        if creation.account_id is not None:
            return creation.account_id
        watch.report(Progress("validating", "the service is checking the sign-in with the broker"))
        await watch.wait(
            creation.retry_after,
            lambda: ProvisioningUnavailable(
                "timed_out",
                "the service is still checking the sign-in with the broker: try again in a"
                " few minutes (nothing is lost; it carries on where it was)",
            ),
        )


async def _connected(
    conn: Connection | None,
    service: TerminalService,
    account_id: str,
    request: TerminalRequest,
    watch: _Watch,
) -> TerminalStatus:
    """The terminal's status once it is deployed and connected to the broker."""
    ref = request.connection
    while True:
        status = await service.status(account_id)
        if conn is not None:
            await conn.execute(
                "UPDATE cloud_terminals SET state = $2, connection_status = $3,"
                " updated_at = now() WHERE connection_id = $1 AND (state IS DISTINCT FROM $2"
                " OR connection_status IS DISTINCT FROM $3)",
                ref.connection_id,
                status.state,
                status.connection_status,
            )
        match status.phase:
            case "ready":
                return status
            case "failed":
                raise ProvisioningUnavailable(
                    "deploy_failed",
                    f"the cloud terminal could not be started ({status.state}): try again later",
                )
            case "stopped":
                await service.deploy(account_id, request)  # stopped meanwhile: start it again
        step, detail = _waiting_for(status, ref)
        watch.report(Progress(step, detail, status.state, status.connection_status))
        await watch.wait(None, functools.partial(_timed_out, status, ref))


def _waiting_for(status: TerminalStatus, ref: ConnectionRef) -> tuple[str, str]:
    if status.phase == "broker_unreachable":
        return "connecting", f"the terminal runs; it cannot reach the server {ref.server!r} yet"
    if status.phase == "connecting":
        return "connecting", "the terminal runs and is connecting to the broker"
    return "deploying", f"the cloud terminal is starting ({status.state})"


def _timed_out(status: TerminalStatus, ref: ConnectionRef) -> ProvisioningError:
    if status.phase == "broker_unreachable":
        return ProvisioningUnavailable(
            "broker_unreachable",
            f"the cloud terminal runs but cannot reach the broker's server {ref.server!r}: the"
            " server may be down or refusing connections; try again later",
        )
    return ProvisioningUnavailable(
        "timed_out",
        f"the cloud terminal is not ready yet ({status.state}, {status.connection_status}):"
        " try again in a few minutes (it carries on where it was)",
    )


async def adopt_terminal(
    conn: Connection,
    connection_id: uuid.UUID,
    credential_id: uuid.UUID,
    verified: VerifiedTerminal,
    transaction_id: str,
    *,
    poll_interval_seconds: int = 60,
) -> None:
    """Make a terminal the wizard verified the new connection's, made from `credential_id`,
    ready, and put the connection on the schedule, its first sync due now. A later
    `connections provision` finds it as its own (same credentials: it carries on)."""
    async with conn.transaction():
        await conn.execute(
            "INSERT INTO cloud_terminals (connection_id, user_id, provider, transaction_id,"
            " remote_account_id, region, state, connection_status, credential_id, ready_at)"
            " SELECT id, user_id, $2, $3, $4, $5, $6, $7, $8, now() FROM mt5_connections"
            " WHERE id = $1",
            connection_id,
            verified.terminal.provider,
            transaction_id,
            verified.terminal.account_id,
            verified.terminal.region,
            verified.state,
            verified.connection_status,
            credential_id,
        )
        await schedule_connection(conn, connection_id, poll_interval_seconds)
        await conn.execute(
            "UPDATE sync_schedule SET next_sync_at = now(), updated_at = now()"
            " WHERE connection_id = $1",
            connection_id,
        )
