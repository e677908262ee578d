"""How one of the user's connections is doing (state, last sync, errors, credential rotation) and
its sync history a page at a time: read as the user, so row-level security decides."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Literal

import asyncpg
from pydantic import BaseModel, ConfigDict, Field

from services.api.analytics_models import Money
from services.api.connections import ConnectionPath
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
from services.shared.connection_admin.rotation import (
    DUE_AFTER,
    WARN_AFTER,
    ActiveCredential,
    classify_rotation,
)
from services.shared.credential_kinds import BROKER_CREDENTIALS
from services.shared.reconciliation import GapKind

RECENT_ERRORS = 10

_STATE = """
SELECT c.id, c.lifecycle, c.status, c.connection_type, c.live_enabled_at, c.last_sync_at,
       c.last_error, c.locked_at, now() AS now,
       s.connection_id IS NOT NULL AS polled, s.next_sync_at, s.last_attempt_at,
       s.last_success_at, s.consecutive_failures AS poll_failures, s.rejected_credential_id,
       coalesce(a.consecutive_failures, 0) AS webhook_failures,
       r.connection_id IS NOT NULL AS reconciled, r.last_reconciled_at, r.next_due_at,
       r.result AS reconciliation_result, r.missing_deals, r.fetched_deals, r.balance_drift,
       r.detail->>'error' AS reconciliation_error
FROM mt5_connections c
LEFT JOIN sync_schedule s ON s.connection_id = c.id
LEFT JOIN mt5_security_audit a ON a.connection_id = c.id
LEFT JOIN connection_reconciliations r ON r.connection_id = c.id
WHERE c.id = $1
"""
# Active credentials only (unrevoked, unexpired): what rotation is judged by. Never the value.
_CREDENTIALS = """
SELECT id, kind, last_rotated_at, rotation_forced_at, rotation_forced_reason
FROM mt5_credentials
WHERE connection_id = $1 AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > now())
"""
# The poller's failures (kept by 0018's trigger) and the webhooks ingest refused, newest first.
_RECENT_ERRORS = """
SELECT at, source, message FROM (
    SELECT occurred_at AS at, 'poll' AS source, message FROM sync_errors WHERE connection_id = $1
    UNION ALL
    SELECT received_at, 'webhook', 'HTTP ' || status_code || ': ' || reason
    FROM webhook_attempts WHERE connection_id = $1 AND outcome = 'refused'
) e ORDER BY at DESC LIMIT $2
"""
_EXISTS = "SELECT EXISTS (SELECT 1 FROM mt5_connections WHERE id = $1)"
# Each sync's outcome: what an event brought (sync_events), or how a poll failed (sync_errors).
_HISTORY = """
SELECT * FROM (
    SELECT event_id AS id, recorded_at AS at, 'synced' AS outcome, source,
           fills_received, fills_inserted, cash_received, cash_inserted, positions_touched,
           balance_applied, NULL::text AS error
    FROM sync_events WHERE connection_id = $1
    UNION ALL
    SELECT id, occurred_at, 'failed', 'poller', NULL, NULL, NULL, NULL, NULL, NULL, message
    FROM sync_errors WHERE connection_id = $1
) h
WHERE $2::timestamptz IS NULL OR (h.at, h.id) < ($2, $3::uuid)
ORDER BY h.at DESC, h.id DESC
LIMIT $4
"""


class RecentError(BaseModel):
    model_config = ConfigDict(extra="forbid", title="RecentError")

    at: datetime
    # poll: a sync by the poller failed; webhook: ingest refused a delivery (the status and
    # its reason code).
    source: Literal["poll", "webhook"]
    message: str


class RotationView(BaseModel):
    model_config = ConfigDict(extra="forbid", title="RotationView")

    # ok; warning past 60 days; due past 90; forced when suspicious activity (a refused
    # credential, repeated failed webhook signatures) asks for it now.
    state: Literal["ok", "warning", "due", "forced"]
    reason: str | None
    # The newest active credential of each kind, by age in days.
    credentials_age_days: dict[str, int]
    warn_after_days: int = WARN_AFTER.days
    due_after_days: int = DUE_AFTER.days


class ReconciliationView(BaseModel):
    model_config = ConfigDict(extra="forbid", title="ReconciliationView")

    # Null until the first reconciliation has run (the poller's first is an interval after
    # the connection's creation; `poscal-sync reconcile` runs one at once).
    last_reconciled_at: datetime | None
    next_due_at: datetime
    # ok: nothing missing, no drift; gaps: see `gaps`; failed: it could not compare (`error`).
    result: Literal["ok", "gaps", "failed"] | None
    gaps: list[GapKind]
    # Polled: deals the broker's history has that the journal had not, and how many of them
    # were fetched again (published for the pipeline to write).
    missing_deals: int
    fetched_deals: int
    # Webhook-fed: the reported balance minus deposits + realized P&L - charges over the
    # recorded deals, each rounded to the currency's minor unit; null when not compared.
    balance_drift: Money | None
    error: str | None


class ConnectionStatus(BaseModel):
    model_config = ConfigDict(extra="forbid", title="ConnectionStatus")

    connection_id: uuid.UUID
    lifecycle: Literal["active", "paused", "locked", "revoked"]
    status: Literal["idle", "syncing", "error"]
    polled: bool
    live_enabled: bool
    last_sync_at: datetime | None
    last_error: str | None
    # Polled: the poller's failures in a row; webhook-fed: failed webhook verifications in a row.
    consecutive_failures: int
    next_sync_at: datetime | None
    # Polled: waiting_for_credentials (none stored), credentials_rejected (the broker refused
    # them: enter new ones), or scheduled. Null for a webhook-fed connection.
    sync_state: Literal["waiting_for_credentials", "credentials_rejected", "scheduled"] | None
    rotation: RotationView
    recent_errors: list[RecentError]
    # Whether the broker's history and the journal agree; null for a connection that is not
    # reconciled (neither polled nor MT5 webhook-fed, or revoked).
    reconciliation: ReconciliationView | None


class HistoryEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", title="HistoryEntry")

    id: uuid.UUID
    at: datetime
    outcome: Literal["synced", "failed"]
    # Where the activity came from: webhook, poller (and the event's own source names).
    source: str
    fills_received: int | None
    fills_inserted: int | None
    cash_received: int | None
    cash_inserted: int | None
    positions_touched: int | None
    balance_applied: bool | None
    error: str | None


class HistoryPage(BaseModel):
    model_config = ConfigDict(extra="forbid", title="HistoryPage")

    entries: list[HistoryEntry]
    # Pass as `cursor` for the next (older) page; null on the last one.
    next_cursor: str | None


class HistoryQuery(BaseModel):
    model_config = ConfigDict(extra="ignore", title="HistoryQuery")

    limit: int = Field(DEFAULT_LIMIT, ge=1, le=MAX_LIMIT, description="Entries per page.")
    cursor: str | None = Field(
        None, max_length=512, description="From the previous page's `next_cursor`."
    )


def _sync_state(
    row: asyncpg.Record, credentials: list[asyncpg.Record]
) -> Literal["waiting_for_credentials", "credentials_rejected", "scheduled"] | None:
    """As the poller's lease query decides (listing.py says the same for the CLI)."""
    if not row["polled"]:
        return None
    active = {c["id"] for c in credentials if c["kind"] == BROKER_CREDENTIALS}
    if not active:
        return "waiting_for_credentials"
    if active == {row["rejected_credential_id"]}:
        return "credentials_rejected"
    return "scheduled"


async def connection_status(call: Call) -> ConnectionStatus:
    connection_id = call.path(ConnectionPath).connection_id
    async with call.db.as_user(call.caller) as conn:
        row = await conn.fetchrow(_STATE, connection_id)
        if row is None:
            raise NotFound()
        credentials = await conn.fetch(_CREDENTIALS, connection_id)
        errors = await conn.fetch(_RECENT_ERRORS, connection_id, RECENT_ERRORS)
    rotation = classify_rotation(
        (
            ActiveCredential(
                kind=c["kind"],
                last_rotated_at=c["last_rotated_at"],
                rotation_forced_at=c["rotation_forced_at"],
                rotation_forced_reason=c["rotation_forced_reason"],
            )
            for c in credentials
        ),
        row["now"],
    )
    return ConnectionStatus(
        connection_id=row["id"],
        lifecycle=row["lifecycle"],
        status=row["status"],
        polled=row["polled"],
        live_enabled=row["connection_type"] == "demo" or row["live_enabled_at"] is not None,
        last_sync_at=row["last_sync_at"] or row["last_success_at"],
        last_error=row["last_error"],
        consecutive_failures=row["poll_failures"] if row["polled"] else row["webhook_failures"],
        next_sync_at=row["next_sync_at"],
        sync_state=_sync_state(row, credentials),
        rotation=RotationView(
            state=rotation.rotation,
            reason=rotation.reason,
            credentials_age_days=rotation.age_days,
        ),
        recent_errors=[
            RecentError(at=e["at"], source=e["source"], message=e["message"]) for e in errors
        ],
        reconciliation=_reconciliation(row),
    )


def _reconciliation(row: asyncpg.Record) -> ReconciliationView | None:
    if not row["reconciled"]:
        return None
    drift = row["balance_drift"]
    gaps: list[GapKind] = []
    if row["missing_deals"]:
        gaps.append("missing_deals")
    if drift is not None and drift != 0:
        gaps.append("balance_drift")
    return ReconciliationView(
        last_reconciled_at=row["last_reconciled_at"],
        next_due_at=row["next_due_at"],
        result=row["reconciliation_result"],
        gaps=gaps,
        missing_deals=row["missing_deals"],
        fetched_deals=row["fetched_deals"],
        balance_drift=drift,
        error=row["reconciliation_error"],
    )


async def sync_history(call: Call) -> HistoryPage:
    connection_id = call.path(ConnectionPath).connection_id
    query = call.query(HistoryQuery)
    before: Position | None = None
    if query.cursor is not None:
        try:
            before = decode_cursor(query.cursor)
        except InvalidCursor as exc:
            raise ValidationFailed([FieldProblem("query.cursor", str(exc))]) from None
    async with call.db.as_user(call.caller) as conn:
        if not await conn.fetchval(_EXISTS, connection_id):
            raise NotFound()
        rows = await conn.fetch(
            _HISTORY,
            connection_id,
            before.created_at if before else None,
            before.id if before else None,
            query.limit + 1,
        )
    entries = [HistoryEntry(**dict(row)) for row in rows[: query.limit]]
    more = len(rows) > query.limit
    return HistoryPage(
        entries=entries,
        next_cursor=encode_cursor(Position(entries[-1].at, entries[-1].id)) if more else None,
    )


_SAME_AS_MISSING = "Another user's connection is answered exactly as one that does not exist."

OPERATIONS = (
    Operation(
        "GET",
        "/v1/connections/{connection_id}/status",
        connection_status,
        operation_id="getConnectionStatus",
        summary=(
            "How a connection is doing: its state, last sync, errors, credential rotation and"
            " its last reconciliation"
        ),
        description=(
            f"Recent errors are the newest {RECENT_ERRORS}, of polls and of refused webhooks."
            f" Rotation is due past {DUE_AFTER.days} days, with a warning from"
            f" {WARN_AFTER.days}. {_SAME_AS_MISSING}"
        ),
        response=ConnectionStatus,
        path_params=ConnectionPath,
        cost=2,
    ),
    Operation(
        "GET",
        "/v1/connections/{connection_id}/history",
        sync_history,
        operation_id="getConnectionHistory",
        summary="A connection's sync history, newest first, a page at a time",
        description=(
            "Each sync that brought activity (what it received and what was new) and each"
            f" failed poll. {_SAME_AS_MISSING}"
        ),
        response=HistoryPage,
        path_params=ConnectionPath,
        query=HistoryQuery,
        cost=2,
    ),
)
