"""Per-broker poll adapters, found by name: adding a broker means adding `adapters/<broker>.py`
(and its normalizer mapper `services/normalizer/mappers/<broker>.py`), nothing shared.

Each adapter module defines `create(context: AdapterContext) -> BrokerAdapter`. An adapter does
HTTP only: it pages through what changed since a cursor and hands each page over as the raw bytes
its mapper reads. It never touches Kafka or Postgres; the poller publishes each page and saves
the page's cursor only once the publish is acknowledged.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Protocol

import httpx

from services.shared.envelope import ConnectionRef
from services.shared.errors import TransientError


@dataclass(frozen=True)
class AdapterContext:
    connection: ConnectionRef
    credentials: bytes  # decrypted only in memory, never logged
    api_url: str | None  # per-connection base-URL override (proxies, tests)
    http: httpx.AsyncClient

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


class CredentialsRejected(Exception):
    """The broker refused the credentials (401/403): stop until they are replaced."""

    def __init__(self, status_code: int, detail: str) -> None:
        super().__init__(f"the broker refused the credentials (HTTP {status_code}): {detail}")
        self.status_code = status_code


class BrokerUnavailable(TransientError):
    """The broker could not answer now (429, 5xx, network); retry after `retry_after` if given."""

    def __init__(self, detail: str, retry_after: float | None = None) -> None:
        super().__init__(detail)
        self.retry_after = retry_after


class BrokerAdapter(Protocol):
    async def authenticate(self) -> None:
        """Check the credentials; raises CredentialsRejected or BrokerUnavailable."""

    async def fetch_account(self) -> dict[str, Any]:
        """The account as the broker describes it (balance, currency...)."""

    def fetch_closed_trades(self, cursor: str | None) -> AsyncIterator[Delta]:
        """Pages of transactions after `cursor` (None: from the beginning), oldest first."""

    async def fetch_open_trades(self) -> list[dict[str, Any]]:
        """The trades open now."""


class AdapterFactory(Protocol):
    def __call__(self, context: AdapterContext) -> BrokerAdapter: ...


_BROKER_NAME = re.compile(r"^[a-z][a-z0-9_]{1,31}$")


def _adapter_module(broker: str) -> ModuleType:
    if not _BROKER_NAME.match(broker):
        raise LookupError(f"no poll adapter for broker {broker!r}")
    name = f"{__name__}.{broker}"
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name != name:
            raise  # the adapter exists but something it imports does not: a broken install
        raise LookupError(f"no poll adapter for broker {broker!r}") from None


def adapter_for(broker: str) -> AdapterFactory:
    """The `create` function of `adapters/<broker>.py`; LookupError if there is none."""
    factory: AdapterFactory = _adapter_module(broker).create
    return factory


def credential_fields(broker: str) -> tuple[str, ...] | None:
    """The fields of a broker's credentials when they are a JSON object (an adapter module's
    `CREDENTIAL_FIELDS`); None when they are a single token. LookupError: no such adapter."""
    fields: tuple[str, ...] | None = getattr(_adapter_module(broker), "CREDENTIAL_FIELDS", None)
    return fields
