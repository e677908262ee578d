"""The ingest app in-process on the session's Postgres, for HTTP-level specifications."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import asyncpg
import httpx

from services.ingest.app import create_app
from services.ingest.bootstrap import IngestWiring, wire
from services.ingest.settings import IngestSettings
from services.shared.envelope import RawEvent
from services.shared.publishing import RawEventSink
from services.shared.vault import CredentialVault


class RecordingSink:
    """Stands in for Kafka where what matters is what would have been published."""

    def __init__(self) -> None:
        self.published: list[RawEvent] = []

    async def publish(self, event: RawEvent) -> None:
        self.published.append(event)


def ingest_settings(master_key: str, database_url: str, **overrides: Any) -> IngestSettings:
    values: dict[str, Any] = {
        "master_key": master_key,
        "database_url": database_url,
        "kafka_bootstrap_servers": "127.0.0.1:1",
        "connection_cache_seconds": 0,
    }
    return IngestSettings(**(values | overrides))


@dataclass
class RunningIngest:
    client: httpx.AsyncClient
    wiring: IngestWiring

    async def settle(self) -> None:
        """Write every queued attempt record now (the audit trail batches them)."""
        await self.wiring.audit.flush()

    async def listening(self, wait_seconds: float = 10.0) -> None:
        """Until the cache hears of connection changes (its listener connects at start-up)."""
        listener = self.wiring.listener
        assert listener is not None, "no listener: set connection_cache_seconds above 0"
        deadline = time.monotonic() + wait_seconds
        while not listener.listening:
            assert time.monotonic() < deadline, "the change listener never connected"
            await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def running_ingest(
    settings: IngestSettings,
    pool: asyncpg.Pool,
    vault: CredentialVault,
    sink: RawEventSink,
    *,
    client_address: tuple[str, int] = ("203.0.113.7", 40000),
    customize: Callable[[IngestWiring], None] | None = None,
) -> AsyncIterator[RunningIngest]:
    built: list[IngestWiring] = []

    async def build(_: contextlib.AsyncExitStack) -> IngestWiring:
        wiring = wire(settings, pool, vault, sink)
        if customize is not None:
            customize(wiring)
        built.append(wiring)
        return wiring

    app = create_app(settings, build)
    transport = httpx.ASGITransport(app=app, client=client_address)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://ingest") as client,
    ):
        yield RunningIngest(client, built[0])


@dataclass(frozen=True)
class IngestStarter:
    """Starts ingest apps in-process: `ingest_with(**settings)` is an app with those settings over
    the defaults, publishing to `sink` unless given another, as an async context manager."""

    pool: asyncpg.Pool
    vault: CredentialVault
    master_key: str
    database_url: str
    sink: RawEventSink
    defaults: Mapping[str, Any] = field(default_factory=dict)

    def __call__(
        self,
        *,
        pool: asyncpg.Pool | None = None,
        vault: CredentialVault | None = None,
        sink: RawEventSink | None = None,
        customize: Callable[[IngestWiring], None] | None = None,
        **settings: Any,
    ) -> contextlib.AbstractAsyncContextManager[RunningIngest]:
        return running_ingest(
            ingest_settings(self.master_key, self.database_url, **{**self.defaults, **settings}),
            self.pool if pool is None else pool,
            self.vault if vault is None else vault,
            self.sink if sink is None else sink,
            customize=customize,
        )

    def defaulting(self, *, sink: RawEventSink | None = None, **settings: Any) -> IngestStarter:
        """This starter with more defaults: what every spec of a module shares."""
        return replace(
            self,
            sink=self.sink if sink is None else sink,
            defaults={**self.defaults, **settings},
        )
