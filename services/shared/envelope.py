"""The raw topic's contract: a broker payload exactly as received, plus receipt metadata."""

from __future__ import annotations

import base64
import uuid
from datetime import datetime
from typing import Any, Literal, Protocol

from pydantic import AwareDatetime, BaseModel, ConfigDict

BrokerName = str
ConnectionType = Literal["demo", "live"]
# "import": read from a file the account holder exported (an MT5 history report).
EventSource = Literal["webhook", "poller", "import"]


class Row(Protocol):
    """A database row by column name (an asyncpg record, a dict)."""

    def __getitem__(self, column: str, /) -> Any: ...


# Event ids are derived, not random, so a sender's retry of one webhook id is the same event.
_EVENT_NAMESPACE = uuid.UUID("6f1c2d0e-9a55-4c1b-8f3e-7d2a4b6c8e01")


class ConnectionRef(BaseModel):
    """Who an event belongs to, as ingest resolved it from the authenticated connection."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    connection_id: uuid.UUID
    user_id: uuid.UUID
    account_id: uuid.UUID
    broker: BrokerName
    connection_type: ConnectionType
    account_number: str
    server: str | None = None

    @classmethod
    def from_row(cls, row: Row, id_column: str = "id") -> ConnectionRef:
        """The connection as `mt5_connections` stores it (a blank server is none)."""
        return cls(
            connection_id=row[id_column],
            user_id=row["user_id"],
            account_id=row["account_id"],
            broker=row["broker"],
            connection_type=row["connection_type"],
            account_number=row["account_number"],
            server=row["server"] or None,
        )


class RawEvent(BaseModel):
    """One message on the raw topic. `body_b64` is the exact bytes the sender signed."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: Literal[1] = 1
    event_id: uuid.UUID
    source: EventSource
    connection: ConnectionRef
    received_at: AwareDatetime
    delivery_id: str
    sent_at: AwareDatetime | None = None
    content_type: str = "application/json"
    body_b64: str

    @property
    def body(self) -> bytes:
        return base64.b64decode(self.body_b64, validate=True)

    @classmethod
    def wrap(
        cls,
        *,
        source: EventSource,
        connection: ConnectionRef,
        received_at: datetime,
        delivery_id: str,
        body: bytes,
        sent_at: datetime | None = None,
        content_type: str = "application/json",
    ) -> RawEvent:
        return cls(
            event_id=derive_event_id(connection.connection_id, delivery_id),
            source=source,
            connection=connection,
            received_at=received_at,
            delivery_id=delivery_id,
            sent_at=sent_at,
            content_type=content_type,
            body_b64=base64.b64encode(body).decode("ascii"),
        )


def derive_event_id(connection_id: uuid.UUID, delivery_id: str) -> uuid.UUID:
    """The same delivery (webhook id, or poll window) of one connection is always one event."""
    return uuid.uuid5(_EVENT_NAMESPACE, f"{connection_id}:{delivery_id}")
