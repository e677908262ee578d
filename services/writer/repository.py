"""The writer's SQL: one transaction applies a batch of canonical events idempotently.

Fills and cash movements are inserted by their broker-derived keys (a replay inserts nothing);
every position that gained a fill is recomputed from all of its fills under a per-position lock,
so redelivery in any order converges on the same journal rows.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from services.shared.canonical import AccountSnapshot, CanonicalBatch, CashMovement, Fill
from services.shared.database import Connection
from services.shared.envelope import ConnectionRef
from services.shared.logging import get_logger
from services.writer.aggregation import (
    PositionCharge,
    PositionFill,
    TradeAggregate,
    aggregate_position,
)

_log = get_logger("poscal.writer")

_INSERT_FILLS = """
INSERT INTO broker_fills (fill_key, position_key, user_id, connection_id, account_id, broker,
    symbol, side, entry, volume, price, profit, commission, swap, fee, executed_at, broker_time,
    broker_ref, order_ref, comment, cancelled, event_id)
SELECT * FROM unnest($1::text[], $2::text[], $3::uuid[], $4::uuid[], $5::uuid[], $6::text[],
    $7::text[], $8::text[], $9::text[], $10::numeric[], $11::numeric[], $12::numeric[],
    $13::numeric[], $14::numeric[], $15::numeric[], $16::timestamptz[], $17::text[], $18::text[],
    $19::text[], $20::text[], $21::bool[], $22::uuid[])
-- A fill is written once; the one later change is its cancellation, which is final.
ON CONFLICT (fill_key) DO UPDATE SET cancelled = true
    WHERE EXCLUDED.cancelled AND NOT broker_fills.cancelled
RETURNING fill_key, position_key
"""

_INSERT_CASH = """
INSERT INTO broker_cash_movements (movement_key, user_id, connection_id, account_id, kind, amount,
    currency, executed_at, broker_time, broker_ref, comment, event_id, position_key)
SELECT * FROM unnest($1::text[], $2::uuid[], $3::uuid[], $4::uuid[], $5::text[], $6::numeric[],
    $7::text[], $8::timestamptz[], $9::text[], $10::text[], $11::text[], $12::uuid[], $13::text[])
ON CONFLICT (movement_key) DO NOTHING
RETURNING movement_key, position_key
"""

_LOCK_POSITIONS = """
SELECT count(pg_advisory_xact_lock(hashtextextended(k, 7)))
FROM (SELECT k FROM unnest($1::text[]) AS k ORDER BY k) AS ordered
"""

# A position's fills are those its own connection delivered: nothing written under the same
# key by anyone else can reach its journal row.
_POSITION_FILLS = """
SELECT f.fill_key, f.position_key, f.symbol, f.side, f.entry, f.volume, f.price, f.profit,
    f.commission, f.swap, f.fee, f.executed_at, f.broker_ref
FROM broker_fills AS f
JOIN unnest($1::text[], $2::uuid[]) AS p(position_key, connection_id)
    ON f.position_key = p.position_key AND f.connection_id = p.connection_id
WHERE NOT f.cancelled
"""

# A position's charges, likewise only those its own connection delivered.
_POSITION_CHARGES = """
SELECT m.movement_key, m.position_key, m.kind, m.amount, m.executed_at
FROM broker_cash_movements AS m
JOIN unnest($1::text[], $2::uuid[]) AS p(position_key, connection_id)
    ON m.position_key = p.position_key AND m.connection_id = p.connection_id
"""

_UPSERT_JOURNAL = """
INSERT INTO trading_journal AS j (mt5_trade_id, position_key, user_id, account_id, connection_id,
    connection_type, broker, symbol, side, volume, closed_volume, entry_price, exit_price,
    opened_at, closed_at, profit, commission, swap, fees, status, fill_count, synced_at)
SELECT *, now() FROM unnest($1::text[], $2::text[], $3::uuid[], $4::uuid[], $5::uuid[],
    $6::text[], $7::text[], $8::text[], $9::text[], $10::numeric[], $11::numeric[],
    $12::numeric[], $13::numeric[], $14::timestamptz[], $15::timestamptz[], $16::numeric[],
    $17::numeric[], $18::numeric[], $19::numeric[], $20::text[], $21::int[])
ON CONFLICT (mt5_trade_id) DO UPDATE SET
    symbol = EXCLUDED.symbol, side = EXCLUDED.side, volume = EXCLUDED.volume,
    closed_volume = EXCLUDED.closed_volume, entry_price = EXCLUDED.entry_price,
    exit_price = EXCLUDED.exit_price, opened_at = EXCLUDED.opened_at,
    closed_at = EXCLUDED.closed_at, profit = EXCLUDED.profit, commission = EXCLUDED.commission,
    swap = EXCLUDED.swap, fees = EXCLUDED.fees, status = EXCLUDED.status,
    fill_count = EXCLUDED.fill_count, account_id = EXCLUDED.account_id,
    connection_id = EXCLUDED.connection_id, connection_type = EXCLUDED.connection_type,
    synced_at = now(), updated_at = now()
-- Trade ids are unique across users: a row another user keeps under one (their history of an
-- account now connected by someone else) is left alone, and missing from what this returns.
WHERE j.user_id = EXCLUDED.user_id
RETURNING mt5_trade_id
"""

_DELETE_STALE_SEGMENTS = """
DELETE FROM trading_journal AS j
USING unnest($1::text[], $2::uuid[]) AS p(position_key, user_id)
WHERE j.position_key = p.position_key AND j.user_id = p.user_id
    AND NOT (j.mt5_trade_id = ANY($3::text[]))
"""

# A newer report wins, unless its deals are older than deals already recorded for the account
# (fills of this very batch included): that is an old report re-sent, and would roll back.
_APPLY_BALANCE = """
UPDATE trading_accounts
SET current_balance = $2, equity = $3, currency = coalesce($4, currency),
    balance_as_of = $5, balance_received_at = $6, updated_at = now()
WHERE id = $1 AND (balance_as_of IS NULL
    OR (balance_as_of, coalesce(balance_received_at, '-infinity')) < ($5, $6))
AND ($7::timestamptz IS NULL OR $7 >= coalesce(greatest(
    (SELECT max(executed_at) FROM broker_fills WHERE account_id = $1),
    (SELECT max(executed_at) FROM broker_cash_movements WHERE account_id = $1)), '-infinity'))
RETURNING id
"""

_RECORD_EVENTS = """
INSERT INTO sync_events (event_id, connection_id, user_id, source, received_at, fills_received,
    fills_inserted, cash_received, cash_inserted, positions_touched, balance_applied)
SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::text[], $5::timestamptz[],
    $6::int[], $7::int[], $8::int[], $9::int[], $10::int[], $11::bool[])
ON CONFLICT (event_id) DO NOTHING
RETURNING event_id
"""

_AUDIT_SYNC = """
INSERT INTO mt5_security_audit AS a (connection_id, user_id, monthly_sync_count, sync_month,
    last_sync_at, last_event_id)
VALUES ($1, $2, $3, date_trunc('month', $4 AT TIME ZONE 'UTC')::date, $4, $5)
ON CONFLICT (connection_id) DO UPDATE SET
    -- A newer month starts the count over; a late event from an older month changes nothing.
    monthly_sync_count = CASE
        WHEN a.sync_month IS NULL OR EXCLUDED.sync_month > a.sync_month
            THEN EXCLUDED.monthly_sync_count
        WHEN EXCLUDED.sync_month = a.sync_month
            THEN a.monthly_sync_count + EXCLUDED.monthly_sync_count
        ELSE a.monthly_sync_count END,
    sync_month = greatest(a.sync_month, EXCLUDED.sync_month),
    last_sync_at = greatest(a.last_sync_at, EXCLUDED.last_sync_at),
    last_event_id = CASE WHEN EXCLUDED.last_sync_at >= coalesce(a.last_sync_at, '-infinity')
        THEN EXCLUDED.last_event_id ELSE a.last_event_id END,
    updated_at = now()
"""

_TOUCH_CONNECTIONS = """
UPDATE mt5_connections AS c SET last_sync_at = greatest(c.last_sync_at, v.at), updated_at = now()
FROM unnest($1::uuid[], $2::timestamptz[]) AS v(id, at) WHERE c.id = v.id
"""


@dataclass(frozen=True)
class EventOutcome:
    event_id: uuid.UUID
    fills_inserted: int
    cash_inserted: int
    positions_touched: int
    balance_applied: bool
    first_time: bool


def _dedupe_fills(batches: Sequence[CanonicalBatch]) -> list[tuple[CanonicalBatch, Fill]]:
    seen: dict[str, tuple[CanonicalBatch, Fill]] = {}
    for batch in batches:
        for fill in batch.fills:
            seen.setdefault(fill.fill_key, (batch, fill))
    return list(seen.values())


def _dedupe_cash(batches: Sequence[CanonicalBatch]) -> list[tuple[CanonicalBatch, CashMovement]]:
    seen: dict[str, tuple[CanonicalBatch, CashMovement]] = {}
    for batch in batches:
        for movement in batch.cash_movements:
            seen.setdefault(movement.movement_key, (batch, movement))
    return list(seen.values())


class JournalRepository:
    async def apply(
        self, conn: Connection, batches: Sequence[CanonicalBatch]
    ) -> list[EventOutcome]:
        async with conn.transaction():
            fill_owner, filled = await self._insert_fills(conn, batches)
            cash_owner, charged = await self._insert_cash(conn, batches)
            new_positions = filled | charged
            await self._recompute_positions(conn, batches, new_positions)
            balance_events = await self._apply_balances(conn, batches)
            outcomes = [
                EventOutcome(
                    event_id=b.event_id,
                    fills_inserted=fill_owner.get(b.event_id, 0),
                    cash_inserted=cash_owner.get(b.event_id, 0),
                    positions_touched=len(_positions_of(b) & new_positions),
                    balance_applied=b.event_id in balance_events,
                    first_time=False,
                )
                for b in batches
            ]
            first_time = await self._record_events(conn, batches, outcomes)
        return [
            EventOutcome(**{**o.__dict__, "first_time": o.event_id in first_time}) for o in outcomes
        ]

    async def _insert_fills(
        self, conn: Connection, batches: Sequence[CanonicalBatch]
    ) -> tuple[dict[uuid.UUID, int], set[str]]:
        pairs = _dedupe_fills(batches)
        if not pairs:
            return {}, set()
        columns = list(
            zip(
                *[_fill_row(batch.connection, batch.event_id, f) for batch, f in pairs], strict=True
            )
        )
        rows = await conn.fetch(_INSERT_FILLS, *columns)
        inserted = {r["fill_key"] for r in rows}
        owner: dict[uuid.UUID, int] = {}
        for batch, fill in pairs:
            if fill.fill_key in inserted:
                owner[batch.event_id] = owner.get(batch.event_id, 0) + 1
        return owner, {r["position_key"] for r in rows}

    async def _insert_cash(
        self, conn: Connection, batches: Sequence[CanonicalBatch]
    ) -> tuple[dict[uuid.UUID, int], set[str]]:
        pairs = _dedupe_cash(batches)
        if not pairs:
            return {}, set()
        columns = list(zip(*[_cash_row(b, m) for b, m in pairs], strict=True))
        rows = await conn.fetch(_INSERT_CASH, *columns)
        inserted = {r["movement_key"] for r in rows}
        owner: dict[uuid.UUID, int] = {}
        for batch, movement in pairs:
            if movement.movement_key in inserted:
                owner[batch.event_id] = owner.get(batch.event_id, 0) + 1
        return owner, {r["position_key"] for r in rows if r["position_key"] is not None}

    async def _recompute_positions(
        self, conn: Connection, batches: Sequence[CanonicalBatch], positions: set[str]
    ) -> None:
        # Only positions that gained a fill can change; a pure replay recomputes nothing.
        if not positions:
            return
        keys = sorted(positions)
        await conn.fetchval(_LOCK_POSITIONS, keys)
        owners = {key: b.connection for b in batches for key in _positions_of(b)}
        connections = [owners[k].connection_id for k in keys]
        fills: dict[str, list[PositionFill]] = {}
        for row in await conn.fetch(_POSITION_FILLS, keys, connections):
            fills.setdefault(row["position_key"], []).append(PositionFill(**dict(row)))
        charges: dict[str, list[PositionCharge]] = {}
        for row in await conn.fetch(_POSITION_CHARGES, keys, connections):
            charges.setdefault(row["position_key"], []).append(PositionCharge(**dict(row)))
        rows = []
        for key in keys:
            for aggregate in aggregate_position(key, fills.get(key, []), charges.get(key, [])):
                rows.append(_journal_row(aggregate, owners[key]))
        trade_ids = [str(r[0]) for r in rows]
        written: set[str] = set()
        if rows:
            columns = list(zip(*rows, strict=True))
            written = {r["mt5_trade_id"] for r in await conn.fetch(_UPSERT_JOURNAL, *columns)}
        users = [owners[k].user_id for k in keys]
        await conn.execute(_DELETE_STALE_SEGMENTS, keys, users, trade_ids)
        if foreign := sorted(set(trade_ids) - written):
            _log.warning(
                "journal rows another user keeps under these trade ids were left alone",
                trade_ids=foreign,
            )

    async def _apply_balances(
        self, conn: Connection, batches: Sequence[CanonicalBatch]
    ) -> set[uuid.UUID]:
        applied = set()
        for account_id, batch in sorted(newest_snapshots(batches).items()):
            snapshot = batch.account
            assert snapshot is not None
            updated = await conn.fetchval(
                _APPLY_BALANCE,
                account_id,
                snapshot.balance,
                snapshot.equity,
                snapshot.currency,
                snapshot.as_of,
                batch.received_at,
                snapshot.deals_through,
            )
            if updated is not None:
                applied.add(batch.event_id)
        return applied

    async def _record_events(
        self,
        conn: Connection,
        batches: Sequence[CanonicalBatch],
        outcomes: Sequence[EventOutcome],
    ) -> set[uuid.UUID]:
        unique = {b.event_id: (b, o) for b, o in zip(batches, outcomes, strict=True)}
        columns = list(
            zip(
                *[
                    (
                        b.event_id,
                        b.connection.connection_id,
                        b.connection.user_id,
                        b.source,
                        b.received_at,
                        len(b.fills),
                        o.fills_inserted,
                        len(b.cash_movements),
                        o.cash_inserted,
                        o.positions_touched,
                        o.balance_applied,
                    )
                    for b, o in unique.values()
                ],
                strict=True,
            )
        )
        first_time = {r["event_id"] for r in await conn.fetch(_RECORD_EVENTS, *columns)}
        per_connection: dict[uuid.UUID, list[CanonicalBatch]] = {}
        for event_id in first_time:
            batch = unique[event_id][0]
            per_connection.setdefault(batch.connection.connection_id, []).append(batch)
        for connection_id, synced in sorted(per_connection.items()):
            latest = max(synced, key=lambda b: b.received_at)
            # Counted toward the month of the latest event; older-month stragglers do not count.
            in_latest_month = sum(
                1 for b in synced if _same_month(b.received_at, latest.received_at)
            )
            await conn.execute(
                _AUDIT_SYNC,
                connection_id,
                latest.connection.user_id,
                in_latest_month,
                latest.received_at,
                latest.event_id,
            )
        if per_connection:
            ids = sorted(per_connection)
            at = [max(b.received_at for b in per_connection[i]) for i in ids]
            await conn.execute(_TOUCH_CONNECTIONS, ids, at)
        return first_time


def _positions_of(batch: CanonicalBatch) -> set[str]:
    """The positions an event's records belong to: its fills' and its position charges'."""
    charged = {m.position_key for m in batch.cash_movements if m.position_key is not None}
    return {f.position_key for f in batch.fills} | charged


def _same_month(a: datetime, b: datetime) -> bool:
    a, b = a.astimezone(UTC), b.astimezone(UTC)
    return (a.year, a.month) == (b.year, b.month)


def newest_snapshots(batches: Sequence[CanonicalBatch]) -> dict[uuid.UUID, CanonicalBatch]:
    """Per account, the batch whose balance report is the one to apply.

    The latest report wins, among those whose deals are not older than the newest deal any
    report of these batches carried (an older one is a stale copy re-sent late).
    """
    reports: dict[uuid.UUID, list[tuple[CanonicalBatch, AccountSnapshot]]] = {}
    for batch in batches:
        if batch.account is not None:
            reports.setdefault(batch.connection.account_id, []).append((batch, batch.account))
    newest = {}
    for account_id, candidates in reports.items():
        newest_deal = max(
            (report.deals_through for _, report in candidates if report.deals_through),
            default=None,
        )
        current = [(b, r) for b, r in candidates if _reflects(r, newest_deal)]
        newest[account_id] = max(current, key=lambda c: (c[1].as_of, c[0].received_at))[0]
    return newest


def _reflects(report: AccountSnapshot, newest_deal: datetime | None) -> bool:
    """Whether a report is at least as recent as the newest deal known (or cannot tell)."""
    if report.deals_through is None or newest_deal is None:
        return True
    return report.deals_through >= newest_deal


def _fill_row(connection: ConnectionRef, event_id: uuid.UUID, f: Fill) -> tuple[object, ...]:
    return (
        f.fill_key,
        f.position_key,
        connection.user_id,
        connection.connection_id,
        connection.account_id,
        connection.broker,
        f.symbol,
        f.side,
        f.entry,
        f.volume,
        f.price,
        f.profit,
        f.commission,
        f.swap,
        f.fee,
        f.executed_at,
        f.broker_time,
        f.broker_ref,
        f.order_ref,
        f.comment,
        f.cancelled,
        event_id,
    )


def _cash_row(batch: CanonicalBatch, m: CashMovement) -> tuple[object, ...]:
    c = batch.connection
    currency = batch.account.currency if batch.account else None
    return (
        m.movement_key,
        c.user_id,
        c.connection_id,
        c.account_id,
        m.kind,
        m.amount,
        currency,
        m.executed_at,
        m.broker_time,
        m.broker_ref,
        m.comment,
        batch.event_id,
        m.position_key,
    )


def _journal_row(a: TradeAggregate, c: ConnectionRef) -> tuple[object, ...]:
    return (
        a.trade_id,
        a.position_key,
        c.user_id,
        c.account_id,
        c.connection_id,
        c.connection_type,
        c.broker,
        a.symbol,
        a.side,
        a.volume,
        a.closed_volume,
        a.entry_price,
        a.exit_price,
        a.opened_at,
        a.closed_at,
        a.profit,
        a.commission,
        a.swap,
        a.fees,
        a.status,
        a.fill_count,
    )
