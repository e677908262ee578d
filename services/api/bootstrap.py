"""The app API's composition root: what answers requests, built once from settings (connected to
Postgres, waiting while it is away; the JWKS fetched in the background until it answers)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import asyncpg
import httpx
from starlette.applications import Starlette

from services.api.budgets import RequestBudgets
from services.api.database import Database
from services.api.jwks import JwksKeys
from services.api.readiness import ApiReadiness
from services.api.routes import OPERATIONS
from services.api.settings import ApiSettings
from services.api.tokens import TokenPolicy, TokenVerifier
from services.api.wizard_verification import Wizard, build_wizard
from services.shared.client_ip import IPNetwork, parse_networks
from services.shared.connection_admin.terminals import TerminalServices, registered_services
from services.shared.dependencies import Dependencies
from services.shared.lifecycle import StoppedWaiting, connect_backoff
from services.shared.logging import get_logger
from services.shared.outbound_http import outbound_http_client
from services.shared.sync_limits import UserSyncLimit
from services.shared.vault import CredentialVault

_log = get_logger("poscal.api")


@dataclass
class ApiWiring:
    """What the operations use; `wire` builds it."""

    db: Database
    tokens: TokenVerifier
    budgets: RequestBudgets
    trusted_proxies: tuple[IPNetwork, ...]
    ready: Callable[[], Awaitable[bool]]
    controls: Controls
    jwks: JwksKeys | None = None
    # The connection wizard; None without a vault key (its routes answer 503).
    wizard: Wizard | None = None
    # The analytics' Sharpe ratio is of returns in excess of this annual rate.
    risk_free_rate: float = 0.0


@dataclass(frozen=True)
class Controls:
    """What the connection controls need beyond the database: the vault (None without a master
    key: those controls answer 503), the terminal services a deletion removes terminals at,
    where webhook URLs point, and the sync limits "sync now" keeps to."""

    vault: CredentialVault | None
    terminals: TerminalServices
    ingest_url: str
    user_sync_limit: UserSyncLimit
    sync_now_min_interval_seconds: int


def jwks_keys(
    settings: ApiSettings, http: httpx.AsyncClient, clock: Callable[[], float] = time.monotonic
) -> JwksKeys | None:
    if not settings.jwks_url:
        return None
    return JwksKeys(
        settings.jwks_url,
        http,
        settings.algorithms,
        min_refresh_seconds=settings.jwks_min_refresh_seconds,
        max_age_seconds=settings.jwks_max_age_seconds,
        clock=clock,
    )


def wire(
    settings: ApiSettings,
    pool: asyncpg.Pool,
    jwks: JwksKeys | None = None,
    *,
    http: httpx.AsyncClient | None = None,
    clock: Callable[[], float] = time.monotonic,
    wizard: Wizard | None = None,
) -> ApiWiring:
    """`http` reaches the cloud terminal services (MetaApi) a deletion removes terminals at;
    without it, deleting a connection that has one is refused (503)."""
    budgets = RequestBudgets(settings.rate_limit_per_user, settings.auth_failures_per_client, clock)
    for operation in OPERATIONS:
        if operation.cost > budgets.largest_cost:
            raise ValueError(
                f"{operation.operation_id} costs {operation.cost}, more than"
                f" POSCAL_API_RATE_LIMIT_PER_USER ever allows at once ({budgets.largest_cost:g})"
            )
    db = Database(pool, settings.statement_timeout_ms)
    secret = settings.jwt_secret.get_secret_value().encode() if settings.jwt_secret else None

    async def no_keys(_kid: str, _algorithm: str) -> None:
        return None

    tokens = TokenVerifier(
        TokenPolicy(
            algorithms=settings.algorithms,
            issuer=settings.jwt_issuer,
            leeway_seconds=settings.jwt_leeway_seconds,
        ),
        secret=secret,
        public_key_for=jwks.key_for if jwks is not None else no_keys,
    )
    keyed = settings.master_key is not None or bool(settings.kek_provider)
    # A key that does not load is configuration: it fails start-up, loudly.
    vault = CredentialVault(settings.key_ring()) if keyed else None
    return ApiWiring(
        db=db,
        tokens=tokens,
        budgets=budgets,
        trusted_proxies=parse_networks(settings.trusted_proxies),
        ready=ApiReadiness(db, jwks),
        controls=Controls(
            vault=vault,
            terminals=registered_services(http) if http is not None else _no_terminals,
            ingest_url=settings.ingest_url,
            user_sync_limit=settings.user_sync_limit,
            sync_now_min_interval_seconds=settings.sync_now_min_interval_seconds,
        ),
        jwks=jwks,
        wizard=wizard if wizard is not None else build_wizard(settings, vault),
        risk_free_rate=settings.risk_free_rate,
    )


def _no_terminals(_: str) -> None:
    return None


async def start(app: Starlette, wiring: ApiWiring, stack: contextlib.AsyncExitStack) -> None:
    """Take requests; fetch the JWKS beside them until it has answered once."""
    if wiring.jwks is not None:
        fetching = asyncio.create_task(_first_fetch(wiring.jwks), name="api-jwks")

        async def stop_fetching() -> None:
            fetching.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await fetching

        stack.push_async_callback(stop_fetching)
    if wiring.wizard is not None:
        stack.push_async_callback(wiring.wizard.aclose)  # provisioning runs, its HTTP client
        sweeping = asyncio.create_task(wiring.wizard.sweep_forever(wiring.db), name="wizard-sweep")

        async def stop_sweeping() -> None:
            sweeping.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sweeping

        stack.push_async_callback(stop_sweeping)
    app.state.wiring = wiring


async def _first_fetch(jwks: JwksKeys, cap_seconds: float = 10.0) -> None:
    backoff = connect_backoff(cap_seconds)
    while True:
        if await jwks.refresh(force=True):
            _log.info("jwks fetched")
            return
        await asyncio.sleep(backoff.next_delay())


async def connect_and_start(
    app: Starlette,
    settings: ApiSettings,
    stack: contextlib.AsyncExitStack,
    stop: asyncio.Event,
    on_fatal: Callable[[BaseException], None] | None,
) -> None:
    """Connect to Postgres (waiting while it is away), then start: the app's background
    start-up. A failure no wait can fix goes to `on_fatal` (the server should exit)."""
    try:
        pool = await Dependencies(settings, stop, stack).postgres(
            max_size=settings.database_pool_size
        )
        http = outbound_http_client(5.0)
        stack.push_async_callback(http.aclose)
        # Terminal services get a longer timeout: removing a terminal is one slow call.
        services_http = outbound_http_client(30.0)
        stack.push_async_callback(services_http.aclose)
        await start(app, wire(settings, pool, jwks_keys(settings, http), http=services_http), stack)
    except StoppedWaiting:
        return
    except Exception as exc:
        # The type and SQLSTATE say which configuration is wrong; a message might quote it.
        _log.error(
            "api cannot start", cause=type(exc).__name__, sqlstate=getattr(exc, "sqlstate", None)
        )
        if on_fatal is not None:
            on_fatal(exc)
        return
    _log.info("api ready")
