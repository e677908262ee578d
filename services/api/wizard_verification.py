"""How the wizard checks what a user entered with the broker: a sign-in bounded in time for the
brokers that discover accounts, and for a cloud terminal (MT5 cloud sync) its provisioning, run
beside the requests while the client follows the session; what it needs is built once (`Wizard`)."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import httpx

from services.api.database import Database
from services.api.settings import ApiSettings
from services.api.tokens import Caller
from services.api.wizard_errors import refusal
from services.shared.brokers import Broker
from services.shared.brokers.discovery import (
    DiscoveryRequest,
    FoundAccount,
    VerificationFailed,
    explain,
)
from services.shared.brokers.errors import (
    BrokerRequestFailed,
    BrokerUnavailable,
    CredentialsRejected,
    UnexpectedResponse,
)
from services.shared.brokers.provisioning import ProvisioningError, TerminalRequest
from services.shared.connection_admin.terminals import (
    Progress,
    ProvisioningLimits,
    TerminalServices,
    provision_terminal,
    registered_services,
)
from services.shared.connection_admin.wizard_sessions import (
    ExpiredTerminal,
    claim_expired_terminals,
    delete_expired_sessions,
    record_failure,
    record_progress,
    record_terminal,
    return_terminal,
)
from services.shared.envelope import ConnectionRef, ConnectionType
from services.shared.errors import PermanentError
from services.shared.logging import get_logger
from services.shared.outbound_http import outbound_http_client
from services.shared.vault import CredentialVault

_log = get_logger("poscal.api.wizard")
# What an adapter may raise for a sign-in that did not work; anything else is our bug.
BROKER_FAILURES = (
    CredentialsRejected,
    BrokerUnavailable,
    BrokerRequestFailed,
    UnexpectedResponse,
    PermanentError,
    VerificationFailed,
    TimeoutError,
    httpx.HTTPError,
)


@dataclass
class Wizard:
    """The vault that seals what was verified, the HTTP client brokers are asked over, and the
    provisioning runs under way (stopped with the API)."""

    vault: CredentialVault
    http: httpx.AsyncClient
    settings: ApiSettings
    terminals: TerminalServices
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    monotonic: Callable[[], float] = time.monotonic
    _runs: set[asyncio.Task[None]] = field(default_factory=set)

    @property
    def session_lifetime(self) -> timedelta:
        return timedelta(minutes=self.settings.wizard_session_minutes)

    def api_url(self, broker_name: str) -> str | None:
        return self.settings.broker_url_overrides.get(broker_name)

    async def discover(
        self, plugin: Broker, credentials: bytes, connection_type: ConnectionType
    ) -> list[FoundAccount]:
        """The accounts the credentials reach; the refusal (an ApiError) that says why not."""
        assert plugin.discover is not None
        timeout = self.settings.wizard_verify_timeout_seconds
        request = DiscoveryRequest(
            credentials, connection_type, self.http, api_url=self.api_url(plugin.name)
        )
        try:
            async with asyncio.timeout(timeout):
                return await plugin.discover(request)
        except BROKER_FAILURES as exc:
            failed = _explained(plugin.title, exc, timeout)
            _log.info("wizard sign-in refused", broker=plugin.name, code=failed.code)
            raise refusal(failed) from None

    def provision(
        self,
        db: Database,
        caller: Caller,
        session_id: uuid.UUID,
        plugin: Broker,
        connection_type: ConnectionType,
        credentials: bytes,
        login: str,
        server: str,
    ) -> None:
        """Start provisioning the session's terminal beside the requests."""
        run = asyncio.create_task(
            self._provision(
                db, caller, session_id, plugin, connection_type, credentials, login, server
            ),
            name=f"wizard-provision-{session_id}",
        )
        self._runs.add(run)
        run.add_done_callback(self._runs.discard)

    async def sweep(self, db: Database) -> int:
        """Remove what expired sessions left: the terminals verified for sessions nobody
        confirmed (at their service: they run and are billed), then the sessions. How many
        terminals were removed."""
        async with db.as_service() as conn:
            claimed = await claim_expired_terminals(conn)
        removed = 0
        for expired in claimed:
            removed += await self.remove_terminal(db, expired)
        async with db.as_service() as conn:
            await delete_expired_sessions(conn)
        return removed

    async def remove_terminal(self, db: Database, expired: ExpiredTerminal) -> bool:
        """Remove a terminal nobody will use; given back to its session for the sweep to try
        again when its service cannot now."""
        service = self.terminals(expired.broker)
        try:
            if service is not None:
                await service.remove(expired.account_id)
        except ProvisioningError as exc:
            _log.warning("wizard terminal not removed yet", code=exc.code)
            async with db.as_service() as conn:
                await return_terminal(conn, expired)
            return False
        return True

    async def sweep_forever(self, db: Database, every_seconds: float = 60.0) -> None:
        while True:
            try:
                await self.sweep(db)
            except Exception as exc:  # Postgres away: the next round tries again
                _log.warning("wizard sweep failed", cause=type(exc).__name__)
            await self.sleep(every_seconds)

    async def wait_for_runs(self) -> None:
        """Until every provisioning run under way has ended (tests)."""
        while self._runs:
            await asyncio.gather(*list(self._runs), return_exceptions=True)

    async def aclose(self) -> None:
        for run in list(self._runs):
            run.cancel()
        await asyncio.gather(*list(self._runs), return_exceptions=True)
        await self.http.aclose()

    async def _provision(
        self,
        db: Database,
        caller: Caller,
        session_id: uuid.UUID,
        plugin: Broker,
        connection_type: ConnectionType,
        credentials: bytes,
        login: str,
        server: str,
    ) -> None:
        user_id = caller.user_id
        reports: asyncio.Queue[Progress | None] = asyncio.Queue()
        writer = asyncio.create_task(self._write_progress(db, caller, session_id, reports))
        request = TerminalRequest(
            connection=ConnectionRef(
                connection_id=session_id,
                user_id=user_id,
                account_id=uuid.UUID(int=0),
                broker=plugin.name,
                connection_type=connection_type,
                account_number=login,
                server=server,
            ),
            credentials=credentials,
            name=f"PosCal {session_id}",
            # One creation per transaction id: a retried request never makes a second terminal.
            transaction_id=secrets.token_hex(16),
        )
        try:
            service = self.terminals(plugin.name)
            if service is None:
                raise ProvisioningError("no_cloud_sync", f"{plugin.title} has no cloud sync")
            verified = await provision_terminal(
                service,
                request,
                limits=ProvisioningLimits(
                    self.settings.wizard_provisioning_timeout_seconds,
                    self.settings.wizard_provisioning_poll_seconds,
                ),
                progress=reports.put_nowait,
                sleep=self.sleep,
                monotonic=self.monotonic,
            )
            reports.put_nowait(None)
            await writer
            account = _terminal_account(verified.account, login, server, connection_type)
            async with db.as_service_for_self(caller) as conn:
                kept = await record_terminal(
                    conn,
                    self.vault,
                    session_id,
                    user_id,
                    credentials,
                    account,
                    verified,
                    request.transaction_id,
                )
            if not kept:  # the session expired meanwhile: nobody will confirm it
                with contextlib.suppress(ProvisioningError):
                    await service.remove(verified.terminal.account_id)
        except ProvisioningError as exc:
            _log.info("wizard provisioning failed", broker=plugin.name, code=exc.code)
            await self._fail(db, caller, session_id, exc.code, exc.message)
        except Exception as exc:
            _log.error("wizard provisioning broke", cause=type(exc).__name__)
            await self._fail(
                db, caller, session_id, "internal_error", "something went wrong on our side"
            )
        finally:
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer

    async def _fail(
        self, db: Database, caller: Caller, session_id: uuid.UUID, code: str, message: str
    ) -> None:
        async with db.as_service_for_self(caller) as conn:
            await record_failure(conn, session_id, caller.user_id, code, message)

    async def _write_progress(
        self,
        db: Database,
        caller: Caller,
        session_id: uuid.UUID,
        reports: asyncio.Queue[Progress | None],
    ) -> None:
        """Each step as it comes, in order, so the client following the session sees it."""
        while (step := await reports.get()) is not None:
            async with db.as_service_for_self(caller) as conn:
                await record_progress(
                    conn, session_id, caller.user_id, {"step": step.step, "detail": step.detail}
                )


def _explained(title: str, exc: BaseException, timeout: float) -> VerificationFailed:
    if isinstance(exc, httpx.HTTPError):  # a transport failure the adapter did not wrap
        exc = BrokerUnavailable(type(exc).__name__)
    elif isinstance(exc, PermanentError) and not isinstance(
        exc, BrokerRequestFailed | UnexpectedResponse
    ):
        exc = UnexpectedResponse(title, "sign-in", type(exc).__name__)
    return explain(title, exc, timeout)


def _terminal_account(
    info: dict[str, Any], login: str, server: str, connection_type: ConnectionType
) -> FoundAccount:
    """The account as the terminal read it (its trade mode already checked against the
    connection's type)."""

    def text(key: str) -> str | None:
        value = info.get(key)
        return None if value is None or value == "None" else str(value)

    details = {k: v for k in ("broker", "equity", "trade_mode") if (v := text(k)) is not None}
    return FoundAccount(
        account_number=login,
        connection_type=connection_type,
        server=server,
        title=text("broker"),
        currency=text("currency"),
        balance=text("balance"),
        details=details,
    )


def build_wizard(
    settings: ApiSettings, vault: CredentialVault | None, http: httpx.AsyncClient | None = None
) -> Wizard | None:
    """The wizard, or None without the vault (no key configured: its routes then answer 503)."""
    if vault is None:
        return None
    client = http or outbound_http_client(10.0)
    return Wizard(
        vault=vault,
        http=client,
        settings=settings,
        terminals=registered_services(client),
    )
