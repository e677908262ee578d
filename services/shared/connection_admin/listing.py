"""`connections list`: every connection with its health, where a polled one stands with its
broker credentials, whether its credentials are due for rotation (decided in rotation.py),
and its last reconciliation."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

import asyncpg

from services.shared.connection_admin.connections import webhook_url
from services.shared.connection_admin.rotation import ActiveCredential, classify_rotation
from services.shared.credential_kinds import BROKER_CREDENTIALS
from services.shared.database import Connection

# Where a polled connection stands with its broker credentials, as the poller's lease query
# decides (services/poller/schedule.py): polled only with an active credential not refused.
SyncState = Literal["waiting_for_credentials", "credentials_rejected", "scheduled"]


async def list_connections(
    conn: Connection,
    now: datetime,
    ingest_url: str,
    *,
    user_id: uuid.UUID | None = None,
    rotation_due_only: bool = False,
) -> list[dict[str, Any]]:
    """One plain record per connection, oldest first, with its current webhook URL under
    `ingest_url`. `rotation_due_only` keeps those whose rotation is not "ok", leaving out
    revoked connections (nothing to rotate there)."""
    rows = await conn.fetch(
        "SELECT c.id, c.user_id, c.broker, c.connection_type, c.account_number, c.server,"
        " c.account_label, c.lifecycle, c.status, c.last_sync_at, c.last_error, c.locked_at,"
        " c.live_enabled_at,"
        " c.webhook_path_id,"
        " coalesce(a.consecutive_failures, 0) AS consecutive_failures,"
        " s.connection_id IS NOT NULL AS polled, s.last_success_at, s.next_sync_at,"
        " coalesce(s.consecutive_failures, 0) AS sync_failures, s.last_error AS sync_error,"
        " s.credentials_rejected_at, s.rejected_credential_id,"
        " r.last_reconciled_at, r.result AS reconciliation, r.missing_deals, r.balance_drift"
        " FROM mt5_connections c LEFT JOIN mt5_security_audit a ON a.connection_id = c.id"
        " LEFT JOIN sync_schedule s ON s.connection_id = c.id"
        " LEFT JOIN connection_reconciliations r ON r.connection_id = c.id"
        " WHERE ($1::uuid IS NULL OR c.user_id = $1) ORDER BY c.created_at, c.id",
        user_id,
    )
    credentials: dict[uuid.UUID, list[ActiveCredential]] = {}
    broker_credentials: dict[uuid.UUID, set[uuid.UUID]] = {}
    for row in await conn.fetch(
        "SELECT id, connection_id, kind, last_rotated_at, rotation_forced_at,"
        " rotation_forced_reason"
        " FROM mt5_credentials WHERE connection_id = ANY($1::uuid[]) AND revoked_at IS NULL"
        " AND (expires_at IS NULL OR expires_at > $2)",
        [r["id"] for r in rows],
        now,
    ):
        credentials.setdefault(row["connection_id"], []).append(
            ActiveCredential(
                kind=row["kind"],
                last_rotated_at=row["last_rotated_at"],
                rotation_forced_at=row["rotation_forced_at"],
                rotation_forced_reason=row["rotation_forced_reason"],
            )
        )
        if row["kind"] == BROKER_CREDENTIALS:
            broker_credentials.setdefault(row["connection_id"], set()).add(row["id"])
    listed = [
        _record(
            row,
            credentials.get(row["id"], []),
            _sync_state(row, broker_credentials.get(row["id"], set())),
            now,
            ingest_url,
        )
        for row in rows
    ]
    if rotation_due_only:
        return [r for r in listed if r["rotation"] != "ok" and r["lifecycle"] != "revoked"]
    return listed


def _sync_state(row: asyncpg.Record, active: set[uuid.UUID]) -> SyncState | None:
    """None for a connection that is not polled."""
    if not row["polled"]:
        return None
    if not active:
        return "waiting_for_credentials"
    if active == {row["rejected_credential_id"]}:
        return "credentials_rejected"
    return "scheduled"


def _record(
    row: asyncpg.Record,
    credentials: list[ActiveCredential],
    sync_state: SyncState | None,
    now: datetime,
    ingest_url: str,
) -> dict[str, Any]:
    status = classify_rotation(credentials, now)
    return {
        "connection_id": row["id"],
        "user_id": row["user_id"],
        "broker": row["broker"],
        "connection_type": row["connection_type"],
        "account_number": row["account_number"],
        "server": row["server"],
        "account_label": row["account_label"],
        "webhook_url": webhook_url(ingest_url, row["broker"], row["webhook_path_id"]),
        # What the connection is (active, paused, locked, revoked), and how its sync is doing
        # (idle, syncing, error).
        "lifecycle": row["lifecycle"],
        "status": row["status"],
        "last_sync_at": row["last_sync_at"],
        "last_error": row["last_error"],
        "consecutive_failures": row["consecutive_failures"],
        "locked_at": row["locked_at"],
        "live_enabled_at": row["live_enabled_at"],
        # Polled connections: how the poller is doing with them.
        "polled": row["polled"],
        "sync_state": sync_state,
        "last_sync_success_at": row["last_success_at"],
        "next_sync_at": row["next_sync_at"],
        "sync_failures": row["sync_failures"],
        "last_sync_error": row["sync_error"],
        "credentials_rejected_at": row["credentials_rejected_at"],
        "credentials_age_days": status.age_days,
        "rotation": status.rotation,
        "rotation_reason": status.reason,
        # The last reconciliation (`poscal-sync reconcile`, or the poller's schedule): ok, gaps
        # or failed; null before the first.
        "last_reconciled_at": row["last_reconciled_at"],
        "reconciliation": row["reconciliation"],
        "missing_deals": row["missing_deals"],
        # Exact, as text (a Decimal): reported minus recorded, in the account's currency.
        "balance_drift": None if (drift := row["balance_drift"]) is None else format(drift, "f"),
    }
