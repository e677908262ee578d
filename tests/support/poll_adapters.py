"""What poll-adapter specifications share: a context for a test connection, and a sleep that
records how long it was asked to wait instead of waiting."""

from __future__ import annotations

import uuid

import httpx

from services.shared.brokers.polling import AdapterContext, CloudTerminal
from services.shared.envelope import ConnectionRef, ConnectionType


class RecordedSleeps:
    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


class VirtualTime(RecordedSleeps):
    """A sleep that records each wait and moves a clock on by it, instead of waiting."""

    def __init__(self) -> None:
        super().__init__()
        self.now = 1000.0

    async def __call__(self, seconds: float) -> None:
        await super().__call__(seconds)
        self.now += seconds

    def monotonic(self) -> float:
        return self.now


def adapter_context(
    http: httpx.AsyncClient,
    *,
    broker: str,
    account_number: str,
    credentials: bytes,
    api_url: str | None,
    connection_type: ConnectionType = "demo",
    server: str | None = None,
    terminal: CloudTerminal | None = None,
) -> AdapterContext:
    connection = ConnectionRef(
        connection_id=uuid.uuid4(),
        user_id=uuid.uuid4(),
        account_id=uuid.uuid4(),
        broker=broker,
        connection_type=connection_type,
        account_number=account_number,
        server=server,
    )
    return AdapterContext(connection, credentials, api_url, http, terminal)
