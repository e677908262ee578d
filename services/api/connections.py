"""The user's broker connections: listed and read as the user (row-level security decides which
rows there are), and relabelled the same way, since row-level security lets users relabel theirs."""

from __future__ import annotations

import unicodedata
import uuid
from datetime import datetime
from typing import Annotated, Literal

import asyncpg
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from services.api.errors import FieldProblem, NotFound, ValidationFailed
from services.api.operations import Call, Operation
from services.api.pagination import (
    DEFAULT_LIMIT,
    MAX_LIMIT,
    InvalidCursor,
    Position,
    decode_cursor,
    encode_cursor,
)
from services.shared.connection_admin.connections import MAX_LABEL_LENGTH
from services.shared.database import Connection

# No `WHERE user_id = ...`: the transaction runs as the user, and row-level security on both
# tables is what keeps every other user's rows out (tests/integration/test_api_isolation.py).
_SELECT = """
SELECT c.id, c.broker, c.connection_type, c.account_number, c.server, c.account_label,
       c.lifecycle, c.status,
       c.last_sync_at, c.last_error, c.locked_at, c.live_enabled_at, c.created_at,
       s.connection_id IS NOT NULL AS polled, s.interval_seconds, s.next_sync_at,
       s.last_attempt_at, s.last_success_at, s.consecutive_failures,
       s.last_error AS sync_error, s.last_error_at, s.credentials_rejected_at
FROM mt5_connections c LEFT JOIN sync_schedule s ON s.connection_id = c.id
"""
_PAGE = (
    _SELECT + "WHERE ($1::timestamptz IS NULL OR (c.created_at, c.id) > ($1, $2::uuid))"
    " ORDER BY c.created_at, c.id LIMIT $3"
)
_ONE = _SELECT + "WHERE c.id = $1"
_RELABEL = "UPDATE mt5_connections SET account_label = $2 WHERE id = $1 RETURNING id"


class PollSchedule(BaseModel):
    """Where the poller stands with a polled connection (absent for webhook connections)."""

    model_config = ConfigDict(extra="forbid", title="PollSchedule")

    interval_seconds: int
    next_sync_at: datetime | None
    last_attempt_at: datetime | None
    last_success_at: datetime | None
    consecutive_failures: int
    last_error: str | None
    last_error_at: datetime | None
    credentials_rejected_at: datetime | None


class ConnectionView(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: uuid.UUID
    broker: str
    connection_type: Literal["demo", "live"]
    account_number: str
    server: str | None
    account_label: str
    # What the connection is, and how its sync is doing (the seed plan's `status`).
    lifecycle: Literal["active", "paused", "locked", "revoked"]
    status: Literal["idle", "syncing", "error"]
    last_sync_at: datetime | None
    last_error: str | None
    locked_at: datetime | None
    live_enabled_at: datetime | None
    created_at: datetime
    poll: PollSchedule | None


class ConnectionPage(BaseModel):
    model_config = ConfigDict(extra="forbid", title="ConnectionPage")

    connections: list[ConnectionView]
    # Pass as `cursor` for the next page; null on the last one.
    next_cursor: str | None


class ConnectionListQuery(BaseModel):
    model_config = ConfigDict(extra="ignore", title="ConnectionListQuery")

    limit: int = Field(DEFAULT_LIMIT, ge=1, le=MAX_LIMIT, description="Connections per page.")
    cursor: str | None = Field(
        None, max_length=512, description="From the previous page's `next_cursor`."
    )


class ConnectionPath(BaseModel):
    model_config = ConfigDict(extra="forbid", title="ConnectionPath")

    connection_id: uuid.UUID


def _a_label(value: str) -> str:
    value = value.strip()
    if any(unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Co", "Cn") for ch in value):
        raise ValueError("a label is printable text (no control or format characters)")
    if not value:
        raise ValueError("a label is not blank")
    return value


class ConnectionChanges(BaseModel):
    """What a user may change of their connection. Everything else (its broker, account,
    status) is the service's."""

    model_config = ConfigDict(extra="forbid", title="ConnectionChanges")

    account_label: Annotated[
        str, Field(min_length=1, max_length=MAX_LABEL_LENGTH), AfterValidator(_a_label)
    ]


def connection_view(row: asyncpg.Record) -> ConnectionView:
    poll = None
    if row["polled"]:
        poll = PollSchedule(
            interval_seconds=row["interval_seconds"],
            next_sync_at=row["next_sync_at"],
            last_attempt_at=row["last_attempt_at"],
            last_success_at=row["last_success_at"],
            consecutive_failures=row["consecutive_failures"],
            last_error=row["sync_error"],
            last_error_at=row["last_error_at"],
            credentials_rejected_at=row["credentials_rejected_at"],
        )
    return ConnectionView(
        id=row["id"],
        broker=row["broker"],
        connection_type=row["connection_type"],
        account_number=row["account_number"],
        server=row["server"] or None,
        account_label=row["account_label"],
        lifecycle=row["lifecycle"],
        status=row["status"],
        last_sync_at=row["last_sync_at"],
        last_error=row["last_error"],
        locked_at=row["locked_at"],
        live_enabled_at=row["live_enabled_at"],
        created_at=row["created_at"],
        poll=poll,
    )


async def list_connections(call: Call) -> ConnectionPage:
    query = call.query(ConnectionListQuery)
    after: Position | None = None
    if query.cursor is not None:
        try:
            after = decode_cursor(query.cursor)
        except InvalidCursor as exc:
            raise ValidationFailed([FieldProblem("query.cursor", str(exc))]) from None
    async with call.db.as_user(call.caller) as conn:
        rows = await conn.fetch(
            _PAGE,
            after.created_at if after else None,
            after.id if after else None,
            query.limit + 1,
        )
    page = [connection_view(row) for row in rows[: query.limit]]
    more = len(rows) > query.limit
    return ConnectionPage(
        connections=page,
        next_cursor=encode_cursor(Position(page[-1].created_at, page[-1].id)) if more else None,
    )


async def one_connection(conn: Connection, connection_id: uuid.UUID) -> ConnectionView:
    row = await conn.fetchrow(_ONE, connection_id)
    if row is None:
        raise NotFound()
    return connection_view(row)


async def get_connection(call: Call) -> ConnectionView:
    connection_id = call.path(ConnectionPath).connection_id
    async with call.db.as_user(call.caller) as conn:
        return await one_connection(conn, connection_id)


async def change_connection(call: Call) -> ConnectionView:
    connection_id = call.path(ConnectionPath).connection_id
    changes = call.body(ConnectionChanges)
    async with call.db.as_user(call.caller) as conn:
        if await conn.fetchval(_RELABEL, connection_id, changes.account_label) is None:
            raise NotFound()
        return await one_connection(conn, connection_id)


OPERATIONS = (
    Operation(
        "GET",
        "/v1/connections",
        list_connections,
        operation_id="listConnections",
        summary="The user's broker connections, oldest first, a page at a time",
        response=ConnectionPage,
        query=ConnectionListQuery,
        # A page reads up to 100 connections with their schedules.
        cost=2,
    ),
    Operation(
        "GET",
        "/v1/connections/{connection_id}",
        get_connection,
        operation_id="getConnection",
        summary="One of the user's broker connections",
        description="Another user's connection is answered exactly as one that does not exist.",
        response=ConnectionView,
        path_params=ConnectionPath,
    ),
    Operation(
        "PATCH",
        "/v1/connections/{connection_id}",
        change_connection,
        operation_id="changeConnection",
        summary="Relabel one of the user's broker connections",
        description="Another user's connection is answered exactly as one that does not exist.",
        response=ConnectionView,
        path_params=ConnectionPath,
        body=ConnectionChanges,
    ),
)
