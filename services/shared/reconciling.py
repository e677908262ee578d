"""Reconciliation's shell: finds the connections to reconcile, re-reads a polled broker's history
through its adapter and publishes the pages holding deals the journal lacks (the normal raw-event
path: the pipeline writes them), compares an MT5 webhook account's reported balance with its
recorded deals, and records each result for the status. Run by `poscal-sync reconcile` and, on a
schedule, leased like syncs, by the poller. The comparisons are reconciliation.py's."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

import asyncpg
import httpx

from services.shared import credential_kinds
from services.shared.brokers import adapter_for, broker
from services.shared.brokers.polling import AdapterContext, AdapterFactory, CloudTerminal
from services.shared.envelope import ConnectionRef, RawEvent
from services.shared.errors import InvalidEvent
from services.shared.publishing import RawEventSink
from services.shared.reconciliation import (
    GAP_KINDS,
    OUTSIDE_BALANCE_KINDS,
    HistoryPage,
    MissingDeals,
    Reconciliation,
    compare_balance,
    missing_deals,
    reconciliation_report,
)
from services.shared.vault import CredentialVault

# A reconciliation's pages are events of their own (`reconcile:` + the page's delivery id): the
# same page read again by a later reconciliation is the same event, never a sync's.
DELIVERY_PREFIX = "reconcile:"

# Connections with something to compare: polled ones (on the schedule; a cloud terminal ready)
# and MT5 ones fed by webhooks (MT5 with no schedule row).
_TARGETS = """
SELECT c.id, c.user_id, c.account_id, c.broker, c.connection_type, c.account_number, c.server,
       c.api_url, s.connection_id IS NOT NULL AS polled,
       t.provider AS terminal_provider, t.remote_account_id AS terminal_account_id,
       t.region AS terminal_region
FROM mt5_connections c
LEFT JOIN sync_schedule s ON s.connection_id = c.id
LEFT JOIN cloud_terminals t ON t.connection_id = c.id
WHERE c.lifecycle IN ('active', 'locked')
  AND (s.connection_id IS NOT NULL OR c.broker = 'mt5')
  AND (t.connection_id IS NULL OR (t.ready_at IS NOT NULL AND t.removing_at IS NULL))
  AND ($1::uuid[] IS NULL OR c.id = ANY($1::uuid[]))
ORDER BY c.created_at, c.id
"""
_STORED_KEYS = """
SELECT fill_key FROM broker_fills WHERE fill_key = ANY($1::text[])
UNION ALL
SELECT movement_key FROM broker_cash_movements WHERE movement_key = ANY($1::text[])
"""
# The reported balance, and what the deals recorded up to the time it is as of add up to:
# realized P&L and every charge on the fills, plus the account's cash movements (deposits,
# withdrawals, charges), except those outside the balance (credit).
_BALANCE = """
SELECT a.current_balance, a.currency, a.balance_as_of,
       (SELECT coalesce(sum(f.profit + f.commission + f.swap + f.fee), 0) FROM broker_fills f
        WHERE f.account_id = a.id AND NOT f.cancelled AND f.executed_at <= a.balance_as_of)
       + (SELECT coalesce(sum(m.amount), 0) FROM broker_cash_movements m
          WHERE m.account_id = a.id AND m.kind <> ALL($2::text[])
            AND m.executed_at <= a.balance_as_of) AS recorded_total
FROM trading_accounts a WHERE a.id = $1
"""
_RECORD = """
INSERT INTO connection_reconciliations AS r
    (connection_id, user_id, last_reconciled_at, result, missing_deals, fetched_deals,
     balance_drift, detail, next_due_at)
VALUES ($1, $2, now(), $3, $4, $5, $6, $7::jsonb, now() + make_interval(secs => $8))
ON CONFLICT (connection_id) DO UPDATE SET
    last_reconciled_at = now(), result = EXCLUDED.result, missing_deals = EXCLUDED.missing_deals,
    fetched_deals = EXCLUDED.fetched_deals, balance_drift = EXCLUDED.balance_drift,
    detail = EXCLUDED.detail, updated_at = now(),
    -- A run by hand leaves the schedule as it is; the poller's moves it on and ends its lease.
    next_due_at = CASE WHEN $9 THEN EXCLUDED.next_due_at ELSE r.next_due_at END,
    lease_owner = CASE WHEN $9 THEN NULL ELSE r.lease_owner END,
    lease_until = CASE WHEN $9 THEN NULL ELSE r.lease_until END
"""
# Every reconcilable connection gets a row, first due one interval on (its first syncs are
# the history's first reading), then due rows are leased, skipping those another replica is
# leasing at this moment.
_ENSURE_ROWS = """
INSERT INTO connection_reconciliations (connection_id, user_id, next_due_at)
SELECT c.id, c.user_id, now() + make_interval(secs => $1) FROM mt5_connections c
LEFT JOIN sync_schedule s ON s.connection_id = c.id
WHERE c.lifecycle IN ('active', 'locked') AND (s.connection_id IS NOT NULL OR c.broker = 'mt5')
ON CONFLICT (connection_id) DO NOTHING
"""
_LEASE_DUE = """
WITH due AS (
    SELECT connection_id FROM connection_reconciliations
    WHERE next_due_at <= now() AND (lease_until IS NULL OR lease_until < now())
    ORDER BY next_due_at, connection_id
    LIMIT $2
    FOR UPDATE SKIP LOCKED
)
UPDATE connection_reconciliations r
SET lease_owner = $1, lease_until = now() + make_interval(secs => $3), updated_at = now()
FROM due WHERE r.connection_id = due.connection_id
RETURNING r.connection_id
"""
_GAP_COUNTS = """
SELECT c.broker,
       count(*) FILTER (WHERE r.missing_deals > 0) AS missing_deals,
       count(*) FILTER (WHERE r.balance_drift <> 0) AS balance_drift
FROM connection_reconciliations r JOIN mt5_connections c ON c.id = r.connection_id
GROUP BY c.broker
"""


@dataclass(frozen=True)
class Target:
    """A connection to reconcile, with what its adapter needs."""

    connection: ConnectionRef
    polled: bool
    api_url: str | None
    terminal: CloudTerminal | None


class Reconciler:
    def __init__(
        self,
        pool: asyncpg.Pool,
        vault: CredentialVault | None,
        http: httpx.AsyncClient,
        sink: RawEventSink,
        *,
        adapters: Callable[[str], AdapterFactory] = adapter_for,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._pool = pool
        self._vault = vault
        self._http = http
        self._sink = sink
        self._adapters = adapters
        self._clock = clock

    async def targets(self, connection_ids: list[uuid.UUID] | None = None) -> list[Target]:
        rows = await self._pool.fetch(_TARGETS, connection_ids)
        return [_target(row) for row in rows]

    async def reconcile(self, target: Target) -> Reconciliation:
        """Compare, fetch what is missing; a failure to compare is the result's `error`."""
        ref = target.connection
        try:
            if target.polled:
                return await self._history(target)
            return await self._balance(ref)
        except Exception as exc:  # the broker, its credentials or the database: said, not raised
            return Reconciliation(
                str(ref.connection_id),
                ref.broker,
                "history" if target.polled else "balance",
                error=_describe(exc),
            )

    async def record(
        self, target: Target, found: Reconciliation, next_due_seconds: float, scheduled: bool
    ) -> None:
        drift = found.balance.drift if found.balance is not None else None
        await self._pool.execute(
            _RECORD,
            target.connection.connection_id,
            target.connection.user_id,
            found.result,
            len(found.missing.keys) if found.missing else 0,
            found.fetched,
            drift,
            reconciliation_report(found),
            next_due_seconds,
            scheduled,
        )

    async def lease_due(
        self, owner: str, limit: int, lease_seconds: float, interval_seconds: float
    ) -> list[Target]:
        """Due connections, leased to `owner` (rows made for new connections first, due one
        interval from now)."""
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute(_ENSURE_ROWS, interval_seconds)
            rows = await conn.fetch(_LEASE_DUE, owner, limit, lease_seconds)
        leased = [row["connection_id"] for row in rows]
        return await self.targets(leased) if leased else []

    async def gap_counts(self) -> dict[tuple[str, str], int]:
        """Connections whose last reconciliation found each kind of gap, per broker."""
        return {
            (row["broker"], kind): row[kind]
            for row in await self._pool.fetch(_GAP_COUNTS)
            for kind in GAP_KINDS
        }

    async def _history(self, target: Target) -> Reconciliation:
        ref = target.connection
        adapter = self._adapters(ref.broker)(
            AdapterContext(
                connection=ref,
                credentials=await self._credentials(ref.connection_id),
                api_url=target.api_url,
                http=self._http,
                terminal=target.terminal,
            )
        )
        await adapter.authenticate()
        plugin = broker(ref.broker)
        keys: list[str] = []
        published: list[int] = []
        fetched = 0
        index = -1
        async for delta in adapter.fetch_closed_trades(None):  # the whole history it gives
            index += 1
            event = RawEvent.wrap(
                source="poller",
                connection=ref,
                received_at=self._clock(),
                delivery_id=DELIVERY_PREFIX + delta.delivery_id,
                content_type=delta.content_type,
                body=delta.body,
            )
            try:
                batch = plugin.map(event).batch
            except InvalidEvent:
                continue  # a page its mapper refuses is the normalizer's to dead-letter
            page = HistoryPage(
                index,
                frozenset(f.fill_key for f in batch.fills)
                | frozenset(m.movement_key for m in batch.cash_movements),
            )
            stored = [r[0] for r in await self._pool.fetch(_STORED_KEYS, list(page.keys))]
            lacking = missing_deals([page], stored)
            if lacking.pages:
                await self._sink.publish(event)  # the pipeline writes it like any page
                fetched += len(lacking.keys)
                keys += lacking.keys
                published += lacking.pages
        missing = MissingDeals(tuple(sorted(keys)), tuple(published))
        return Reconciliation(
            str(ref.connection_id), ref.broker, "history", missing=missing, fetched=fetched
        )

    async def _balance(self, ref: ConnectionRef) -> Reconciliation:
        row = await self._pool.fetchrow(_BALANCE, ref.account_id, sorted(OUTSIDE_BALANCE_KINDS))
        if row is None or row["balance_as_of"] is None:
            return Reconciliation(
                str(ref.connection_id), ref.broker, "balance", note="no balance reported yet"
            )
        balance = compare_balance(
            Decimal(row["current_balance"]), Decimal(row["recorded_total"]), row["currency"]
        )
        return Reconciliation(str(ref.connection_id), ref.broker, "balance", balance=balance)

    async def _credentials(self, connection_id: uuid.UUID) -> bytes:
        if self._vault is None:
            raise LookupError("no vault key (POSCAL_MASTER_KEY) to open the broker credentials")
        async with self._pool.acquire() as conn:
            opened = await self._vault.open_active_rows(
                conn,
                connection_id,
                credential_kinds.BROKER_CREDENTIALS,
                await conn.fetchval("SELECT now()"),
            )
        if not opened:
            raise LookupError("no broker credentials stored")
        return opened[0][1]


def _target(row: asyncpg.Record) -> Target:
    terminal = (
        CloudTerminal(row["terminal_provider"], row["terminal_account_id"], row["terminal_region"])
        if row["terminal_provider"] is not None
        else None
    )
    return Target(ConnectionRef.from_row(row), row["polled"], row["api_url"], terminal)


def _describe(exc: Exception) -> str:
    """Adapters and the vault never put secrets in their messages."""
    if isinstance(exc, LookupError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"[:500]
