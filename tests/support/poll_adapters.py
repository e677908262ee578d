"""What poll-adapter specifications share: a context for a test connection, and a sleep that
records how long it was asked to wait instead of waiting."""

from __future__ import annotations

import uuid

import httpx

from services.shared.brokers.polling import AdapterContext
from services.shared.envelope import ConnectionRef, ConnectionType


class RecordedSleeps:
    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


def adapter_context(
    http: httpx.AsyncClient,
    *,
    broker: str,
    account_number: str,
    credentials: bytes,
    api_url: str | None,
    connection_type: ConnectionType = "demo",
) -> AdapterContext:
    connection = ConnectionRef(
        connection_id=uuid.uuid4(),
        user_id=uuid.uuid4(),
        account_id=uuid.uuid4(),
        broker=broker,
        connection_type=connection_type,
        account_number=account_number,
    )
    return AdapterContext(connection, credentials, api_url, http)
