"""The poll adapter contract: what the poller and the connection wizard ask of a broker's API."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Protocol

import httpx

from services.shared.envelope import ConnectionRef


@dataclass(frozen=True)
class CloudTerminal:
    """The terminal a cloud service runs for the connection (MetaApi's for an MT5 account), as
    provisioning made it: the service's own id of it and the region it runs in."""

    provider: str
    account_id: str
    region: str | None = None


@dataclass(frozen=True)
class AdapterContext:
    connection: ConnectionRef
    credentials: bytes  # decrypted only in memory, never logged
    api_url: str | None  # per-connection base-URL override (proxies, tests)
    http: httpx.AsyncClient
    # For a broker polled through a provisioned cloud terminal; None for the others.
    terminal: CloudTerminal | None = None

    def __repr__(self) -> str:  # never print credentials
        return f"AdapterContext({self.connection.connection_id}, api_url={self.api_url!r})"


@dataclass(frozen=True)
class Delta:
    """One page of what changed since the cursor, exactly as the mapper will read it."""

    body: bytes
    content_type: str
    # Stable for the same page, so re-polling it is the same event downstream.
    delivery_id: str
    # Where the next poll starts once this page has been acknowledged by Kafka.
    next_cursor: str


class BrokerAdapter(Protocol):
    """A broker's API, HTTP only: it checks credentials, describes the account, and pages through
    what changed since a cursor, each page the raw bytes its mapper reads. It never touches Kafka
    or Postgres; the poller publishes each page and saves its cursor only once Kafka acknowledged
    it."""

    async def authenticate(self) -> None:
        """Check the credentials (lightly); raises CredentialsRejected or BrokerUnavailable
        (see errors.py)."""

    async def fetch_account(self) -> dict[str, Any]:
        """The account as the broker describes it (balance, currency...): the preview a
        connection wizard shows."""

    def fetch_closed_trades(self, cursor: str | None) -> AsyncIterator[Delta]:
        """Pages of what changed after `cursor` (None: from the beginning), oldest first."""


class AdapterFactory(Protocol):
    def __call__(self, context: AdapterContext) -> BrokerAdapter: ...
