"""The writer's SQL: `JournalRepository.apply` writes the canonical events it is given in one
transaction, idempotently."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Generic, TypeVar

from services.shared.analytics.rollup import refresh_for_batches
from services.shared.bulk_rows import BulkRows, Column
from services.shared.canonical import AccountSnapshot, CanonicalBatch, CashMovement, Fill
from services.shared.database import Connection
from services.shared.envelope import ConnectionRef
from services.shared.logging import get_logger
from services.writer.journal import (
    FoldedFill,
    MonthlySyncs,
    PositionCharge,
    PositionFill,
    PositionFold,
    StoredBalance,
    TradeAggregate,
    balance_applies,
    count_syncs,
    fold_position,
    newest_snapshots,
)

_log = get_logger("poscal.writer")
R = TypeVar("R", Fill, CashMovement)


@dataclass(frozen=True)
class _Delivered(Generic[R]):
    """A record (a fill or a cash movement) as one event delivered it."""

    batch: CanonicalBatch
    record: R

    @property
    def connection(self) -> ConnectionRef:
        return self.batch.connection

    @property
    def key(self) -> str:
        return self.record.fill_key if isinstance(self.record, Fill) else self.record.movement_key


FILLS = BulkRows[_Delivered[Fill]](
    "broker_fills",
    (
        Column("fill_key", "text", lambda d: d.record.fill_key),
        Column("position_key", "text", lambda d: d.record.position_key),
        Column("user_id", "uuid", lambda d: d.connection.user_id),
        Column("connection_id", "uuid", lambda d: d.connection.connection_id),
        Column("account_id", "uuid", lambda d: d.connection.account_id),
        Column("broker", "text", lambda d: d.connection.broker),
        Column("symbol", "text", lambda d: d.record.symbol),
        Column("side", "text", lambda d: d.record.side),
        Column("entry", "text", lambda d: d.record.entry),
        Column("volume", "numeric", lambda d: d.record.volume),
        Column("price", "numeric", lambda d: d.record.price),
        Column("profit", "numeric", lambda d: d.record.profit),
        Column("commission", "numeric", lambda d: d.record.commission),
        Column("swap", "numeric", lambda d: d.record.swap),
        Column("fee", "numeric", lambda d: d.record.fee),
        Column("executed_at", "timestamptz", lambda d: d.record.executed_at),
        Column("broker_time", "text", lambda d: d.record.broker_time),
        Column("broker_ref", "text", lambda d: d.record.broker_ref),
        Column("order_ref", "text", lambda d: d.record.order_ref),
        Column("comment", "text", lambda d: d.record.comment),
        Column("cancelled", "bool", lambda d: d.record.cancelled),
        Column("event_id", "uuid", lambda d: d.batch.event_id),
    ),
)
_INSERT_FILLS = FILLS.insert(
    # A fill is written once; the one later change is its cancellation, which is final.
    "ON CONFLICT (fill_key) DO UPDATE SET cancelled = true"
    " WHERE EXCLUDED.cancelled AND NOT broker_fills.cancelled"
    # xmax is 0 in a row this statement inserted, not in one whose cancellation it recorded.
    " RETURNING fill_key, position_key, xmax = 0 AS inserted",
    staged=True,
)

CASH = BulkRows[_Delivered[CashMovement]](
    "broker_cash_movements",
    (
        Column("movement_key", "text", lambda d: d.record.movement_key),
        Column("user_id", "uuid", lambda d: d.connection.user_id),
        Column("connection_id", "uuid", lambda d: d.connection.connection_id),
        Column("account_id", "uuid", lambda d: d.connection.account_id),
        Column("kind", "text", lambda d: d.record.kind),
        Column("amount", "numeric", lambda d: d.record.amount),
        Column("currency", "text", lambda d: d.batch.account.currency if d.batch.account else None),
        Column("executed_at", "timestamptz", lambda d: d.record.executed_at),
        Column("broker_time", "text", lambda d: d.record.broker_time),
        Column("broker_ref", "text", lambda d: d.record.broker_ref),
        Column("comment", "text", lambda d: d.record.comment),
        Column("event_id", "uuid", lambda d: d.batch.event_id),
        Column("position_key", "text", lambda d: d.record.position_key),
    ),
)
_INSERT_CASH = CASH.insert(
    "ON CONFLICT (movement_key) DO NOTHING RETURNING movement_key, position_key, true AS inserted",
    staged=True,
)


@dataclass(frozen=True)
class _JournalRow:
    aggregate: TradeAggregate
    connection: ConnectionRef


JOURNAL = BulkRows[_JournalRow](
    "trading_journal",
    (
        Column("mt5_trade_id", "text", lambda r: r.aggregate.trade_id),
        Column("position_key", "text", lambda r: r.aggregate.position_key),
        Column("user_id", "uuid", lambda r: r.connection.user_id),
        Column("account_id", "uuid", lambda r: r.connection.account_id),
        Column("connection_id", "uuid", lambda r: r.connection.connection_id),
        Column("connection_type", "text", lambda r: r.connection.connection_type),
        Column("broker", "text", lambda r: r.connection.broker),
        Column("symbol", "text", lambda r: r.aggregate.symbol),
        Column("side", "text", lambda r: r.aggregate.side),
        Column("volume", "numeric", lambda r: r.aggregate.volume),
        Column("closed_volume", "numeric", lambda r: r.aggregate.closed_volume),
        Column("entry_price", "numeric", lambda r: r.aggregate.entry_price),
        Column("exit_price", "numeric", lambda r: r.aggregate.exit_price),
        Column("opened_at", "timestamptz", lambda r: r.aggregate.opened_at),
        Column("closed_at", "timestamptz", lambda r: r.aggregate.closed_at),
        Column("profit", "numeric", lambda r: r.aggregate.profit),
        Column("commission", "numeric", lambda r: r.aggregate.commission),
        Column("swap", "numeric", lambda r: r.aggregate.swap),
        Column("fees", "numeric", lambda r: r.aggregate.fees),
        Column("status", "text", lambda r: r.aggregate.status),
        Column("fill_count", "int", lambda r: r.aggregate.fill_count),
    ),
)
# Whose row a trade id is stays as it was; everything else follows the fills.
_JOURNAL_KEPT = ("mt5_trade_id", "position_key", "user_id", "broker")
_UPSERT_JOURNAL = JOURNAL.insert(
    "ON CONFLICT (mt5_trade_id) DO UPDATE SET "
    + JOURNAL.excluded(n for n in JOURNAL.names if n not in _JOURNAL_KEPT)
    + ", synced_at = now(), updated_at = now()"
    # Trade ids are unique across users: a row another user keeps under one (their history of
    # an account now connected by someone else) is left alone, and missing from what this
    # returns.
    " WHERE j.user_id = EXCLUDED.user_id RETURNING mt5_trade_id",
    alias="j",
    computed={"synced_at": "now()"},
    staged=True,
)

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

# Where each position's fold stands (journal.PositionFold), as JSON text (no codec needed); for
# a position without one, whether it has any history beyond the fills this batch inserted
# (`inserted` of them, cancelled ones included): other fills of its connection, a charge, or a
# journal row under its key. One with none is new, and its fold starts from these fills alone.
_POSITION_FOLDS = """
SELECT p.position_key, s.fold::text AS fold, CASE WHEN s.fold IS NULL THEN
    (SELECT count(*) FROM broker_fills AS f
        WHERE f.position_key = p.position_key AND f.connection_id = p.connection_id) <> p.inserted
    OR EXISTS (SELECT FROM broker_cash_movements AS m
        WHERE m.position_key = p.position_key AND m.connection_id = p.connection_id)
    OR EXISTS (SELECT FROM trading_journal AS j WHERE j.position_key = p.position_key)
END AS has_history
FROM unnest($1::text[], $2::uuid[], $3::int[]) AS p(position_key, connection_id, inserted)
LEFT JOIN position_folds AS s
    ON s.position_key = p.position_key AND s.connection_id = p.connection_id
"""
_SAVE_FOLDS = """
INSERT INTO position_folds AS s (connection_id, position_key, user_id, fold)
SELECT c, k, u, f::jsonb
FROM unnest($1::uuid[], $2::text[], $3::uuid[], $4::text[]) AS v(c, k, u, f)
ON CONFLICT (connection_id, position_key) DO UPDATE SET fold = EXCLUDED.fold, updated_at = now()
"""
_FORGET_FOLDS = """
DELETE FROM position_folds AS s
USING unnest($1::uuid[], $2::text[]) AS p(connection_id, position_key)
WHERE s.connection_id = p.connection_id AND s.position_key = p.position_key
"""

# The kept trade ids as a subquery, which Postgres hashes: `<> ALL($3)` compared each row with
# every id of the batch, and was the most expensive statement of a batch.
_DELETE_STALE_SEGMENTS = """
DELETE FROM trading_journal AS j
USING unnest($1::text[], $2::uuid[]) AS p(position_key, user_id)
WHERE j.position_key = p.position_key AND j.user_id = p.user_id
    AND j.mt5_trade_id NOT IN (SELECT unnest($3::text[]))
"""

# Each account's balance as it stands, locked until the transaction ends, with the newest deal
# recorded for it (this batch's fills and movements, inserted before, included). NO KEY UPDATE,
# as an UPDATE itself would lock: other writers' fill inserts hold KEY SHARE on the account
# (their foreign key) while they wait for a position this writer holds.
_STORED_BALANCES = """
SELECT a.id, a.balance_as_of, a.balance_received_at, greatest(
    (SELECT max(executed_at) FROM broker_fills WHERE account_id = a.id),
    (SELECT max(executed_at) FROM broker_cash_movements WHERE account_id = a.id)) AS newest_deal
FROM trading_accounts AS a WHERE a.id = ANY($1::uuid[])
ORDER BY a.id
FOR NO KEY UPDATE OF a
"""


@dataclass(frozen=True)
class _Balance:
    """An account's balance report, as the event that carried it delivered it."""

    batch: CanonicalBatch
    report: AccountSnapshot


BALANCES = BulkRows[_Balance](
    "trading_accounts",
    (
        Column("id", "uuid", lambda b: b.batch.connection.account_id),
        Column("balance", "numeric", lambda b: b.report.balance),
        Column("equity", "numeric", lambda b: b.report.equity),
        Column("currency", "text", lambda b: b.report.currency),
        Column("as_of", "timestamptz", lambda b: b.report.as_of),
        Column("received_at", "timestamptz", lambda b: b.batch.received_at),
    ),
)
_APPLY_BALANCES = BALANCES.update(
    "current_balance = v.balance, equity = v.equity, currency = coalesce(v.currency, a.currency),"
    " balance_as_of = v.as_of, balance_received_at = v.received_at, updated_at = now()",
    alias="a",
    where="a.id = v.id",
)


@dataclass(frozen=True)
class _Recorded:
    batch: CanonicalBatch
    outcome: EventOutcome


SYNC_EVENTS = BulkRows[_Recorded](
    "sync_events",
    (
        Column("event_id", "uuid", lambda r: r.batch.event_id),
        Column("connection_id", "uuid", lambda r: r.batch.connection.connection_id),
        Column("user_id", "uuid", lambda r: r.batch.connection.user_id),
        Column("source", "text", lambda r: r.batch.source),
        Column("received_at", "timestamptz", lambda r: r.batch.received_at),
        Column("fills_received", "int", lambda r: len(r.batch.fills)),
        Column("fills_inserted", "int", lambda r: r.outcome.fills_inserted),
        Column("cash_received", "int", lambda r: len(r.batch.cash_movements)),
        Column("cash_inserted", "int", lambda r: r.outcome.cash_inserted),
        Column("positions_touched", "int", lambda r: r.outcome.positions_touched),
        Column("balance_applied", "bool", lambda r: r.outcome.balance_applied),
    ),
)
_RECORD_EVENTS = SYNC_EVENTS.insert("ON CONFLICT (event_id) DO NOTHING RETURNING event_id")

# Every connection synced has its audit row (made with the connection, but one missing must not
# lose a count), then each is read locked, counted by journal.count_syncs, and written.
AUDIT_ROWS = BulkRows[ConnectionRef](
    "mt5_security_audit",
    (
        Column("connection_id", "uuid", lambda c: c.connection_id),
        Column("user_id", "uuid", lambda c: c.user_id),
    ),
)
_ENSURE_AUDIT_ROWS = AUDIT_ROWS.insert("ON CONFLICT (connection_id) DO NOTHING")
_STORED_SYNCS = """
SELECT connection_id, sync_month, monthly_sync_count, last_sync_at, last_event_id
FROM mt5_security_audit WHERE connection_id = ANY($1::uuid[])
ORDER BY connection_id
FOR NO KEY UPDATE
"""


@dataclass(frozen=True)
class _Synced:
    """One connection's syncs of a batch: their count, and when the latest was received."""

    connection_id: uuid.UUID
    counted: MonthlySyncs
    latest: datetime


SYNCS = BulkRows[_Synced](
    "mt5_security_audit",
    (
        Column("connection_id", "uuid", lambda s: s.connection_id),
        Column("month", "date", lambda s: s.counted.month),
        Column("count", "int", lambda s: s.counted.count),
        Column("last_sync_at", "timestamptz", lambda s: s.counted.last_sync_at),
        Column("last_event_id", "uuid", lambda s: s.counted.last_event_id),
    ),
)
_RECORD_SYNCS = SYNCS.update(
    "sync_month = v.month, monthly_sync_count = v.count, last_sync_at = v.last_sync_at,"
    " last_event_id = v.last_event_id, updated_at = now()",
    alias="a",
    where="a.connection_id = v.connection_id",
)

SYNCED_CONNECTIONS = BulkRows[_Synced](
    "mt5_connections",
    (
        Column("id", "uuid", lambda s: s.connection_id),
        Column("at", "timestamptz", lambda s: s.latest),
    ),
)
_TOUCH_CONNECTIONS = SYNCED_CONNECTIONS.update(
    "last_sync_at = greatest(c.last_sync_at, v.at), updated_at = now()",
    alias="c",
    where="c.id = v.id",
)


# The session's staging tables for what is written by COPY, in one round trip.
_CREATE_STAGING = ";\n".join(rows.create_staging() for rows in (FILLS, CASH, JOURNAL))


@dataclass(frozen=True)
class EventOutcome:
    event_id: uuid.UUID
    fills_inserted: int
    cash_inserted: int
    positions_touched: int
    balance_applied: bool
    first_time: bool


def _first_of_each(
    batches: Sequence[CanonicalBatch], records: Callable[[CanonicalBatch], Sequence[R]]
) -> list[_Delivered[R]]:
    """Each record once (by its key), as the first event of the batch delivered it."""
    seen: dict[str, _Delivered[R]] = {}
    for batch in batches:
        for record in records(batch):
            delivered = _Delivered(batch, record)
            seen.setdefault(delivered.key, delivered)
    return list(seen.values())


def _fills(batch: CanonicalBatch) -> Sequence[Fill]:
    return batch.fills


def _cash_movements(batch: CanonicalBatch) -> Sequence[CashMovement]:
    return batch.cash_movements


class JournalRepository:
    async def apply(
        self, conn: Connection, batches: Sequence[CanonicalBatch]
    ) -> list[EventOutcome]:
        """Apply these events in one transaction; what each of them did.

        Fills and cash movements are inserted by their broker-derived keys (a replay inserts
        nothing); every position that gained a fill or a charge gets the rows folding all of
        them gives (its new fills folded into its stored fold where they extend it), under a
        per-position lock, so redelivery in any order converges on the same journal rows.
        What the rows, the balance and the monthly count become is decided by the pure rules
        of journal.py.
        """
        # The steps, in order, in one transaction; a step that needs the journal rows as this
        # batch leaves them (a rollup of them, say) goes after `_recompute_positions`.
        async with conn.transaction():
            await conn.execute(_CREATE_STAGING)
            fills = _first_of_each(batches, _fills)
            fills_inserted = await self._insert(conn, fills, _INSERT_FILLS, FILLS)
            cash_inserted = await self._insert(
                conn, _first_of_each(batches, _cash_movements), _INSERT_CASH, CASH
            )
            new_positions = fills_inserted.positions | cash_inserted.positions
            recomputed = await self._recompute_positions(
                conn,
                batches,
                new_positions,
                [d for d in fills if d.key in fills_inserted.new],
                refold=fills_inserted.changed_positions | cash_inserted.positions,
            )
            # The analytics' days these positions and movements fall on, from their new rows.
            await refresh_for_batches(
                conn, batches, recomputed.refolded, recomputed.changed_instants
            )
            balance_events = await self._apply_balances(conn, batches)
            outcomes = [
                EventOutcome(
                    event_id=b.event_id,
                    fills_inserted=fills_inserted.per_event.get(b.event_id, 0),
                    cash_inserted=cash_inserted.per_event.get(b.event_id, 0),
                    positions_touched=len(_positions_of(b) & new_positions),
                    balance_applied=b.event_id in balance_events,
                    first_time=False,
                )
                for b in batches
            ]
            first_time = await self._record_events(conn, batches, outcomes)
        return [replace(o, first_time=o.event_id in first_time) for o in outcomes]

    async def _insert(
        self,
        conn: Connection,
        delivered: list[_Delivered[R]],
        statement: str,
        rows: BulkRows[_Delivered[R]],
    ) -> _Inserted:
        """Insert what is new (a fill's cancellation is recorded on the fill already there)."""
        if not delivered:
            return _Inserted({}, set(), set(), set())
        await rows.stage(conn, delivered)
        returned = await conn.fetch(statement)
        keys = {r[0] for r in returned}
        per_event: dict[uuid.UUID, int] = {}
        for d in delivered:
            if d.key in keys:
                per_event[d.batch.event_id] = per_event.get(d.batch.event_id, 0) + 1
        return _Inserted(
            per_event,
            {r["position_key"] for r in returned if r["position_key"] is not None},
            {r[0] for r in returned if r["inserted"]},
            {r["position_key"] for r in returned if not r["inserted"]},
        )

    async def _recompute_positions(
        self,
        conn: Connection,
        batches: Sequence[CanonicalBatch],
        positions: set[str],
        inserted: Sequence[_Delivered[Fill]],
        refold: set[str],
    ) -> _Recomputed:
        """The journal rows of the positions that gained a fill or a charge, under a lock per
        position: a position whose stored fold these fills extend (all later than its last, no
        cancellation, no charge) has them folded in, and only the rows of the round trips they
        touch are written; a new one (no fold, and nothing stored of it but the fills this
        batch inserted) is folded from those fills; any other is folded again from all its
        fills and charges (and its rows no longer there are deleted). journal.fold_position
        gives the same rows every way, so redelivery in any order converges on the same
        journal rows."""
        # Only positions that gained a fill can change; a pure replay recomputes nothing.
        if not positions:
            return _Recomputed(set(), set())
        keys = sorted(positions)
        await conn.fetchval(_LOCK_POSITIONS, keys)
        owners = {key: b.connection for b in batches for key in _positions_of(b)}
        # A position's fills are those its own connection delivered.
        new_fills: dict[str, list[FoldedFill]] = {}
        inserted_per_position: dict[str, int] = {}
        # Where the rows of the positions folded in memory can have closed, before or now: at
        # one of their new fills, or where their latest round trip last closed before.
        instants: set[tuple[uuid.UUID, datetime]] = set()
        for d in inserted:
            key = d.record.position_key
            if d.connection.connection_id == owners[key].connection_id:
                inserted_per_position[key] = inserted_per_position.get(key, 0) + 1
                instants.add((d.connection.account_id, d.record.executed_at))
                if not d.record.cancelled:
                    new_fills.setdefault(key, []).append(d.record)
        # A cancellation takes a fill out, a charge goes to the round trip open when it was
        # booked: such a position is folded again whatever is stored of it.
        refolded = [k for k in keys if k in refold]
        folding = [k for k in keys if k not in refold]
        stored = await conn.fetch(
            _POSITION_FOLDS,
            folding,
            [owners[k].connection_id for k in folding],
            [inserted_per_position.get(k, 0) for k in folding],
        )
        rows: list[_JournalRow] = []
        after: dict[str, PositionFold | None] = {}
        for row in stored:
            key = row["position_key"]
            fills = new_fills.get(key, ())
            if row["fold"] is not None:
                fold = PositionFold.decoded(key, row["fold"])
                if not fold.extends_to(fills):
                    refolded.append(key)
                    continue
                changed, after[key] = fold_position(key, fills, fold)
                if fold.segment.last_out_at is not None:
                    instants.add((owners[key].account_id, fold.segment.last_out_at))
            elif row["has_history"]:
                refolded.append(key)
                continue
            else:
                changed, new_fold = fold_position(key, fills)
                if new_fold is not None:  # none if every fill it gained came cancelled
                    after[key] = new_fold
            rows += [_JournalRow(aggregate, owners[key]) for aggregate in changed]
        if refolded:
            rows += await self._refold(conn, sorted(refolded), owners, after)
        trade_ids = [row.aggregate.trade_id for row in rows]
        written: set[str] = set()
        if rows:
            await JOURNAL.stage(conn, rows)
            upserted = await conn.fetch(_UPSERT_JOURNAL)
            written = {r["mt5_trade_id"] for r in upserted}
        await self._save_folds(conn, owners, after)
        if foreign := sorted(set(trade_ids) - written):
            _log.warning(
                "journal rows another user keeps under these trade ids were left alone",
                trade_ids=foreign,
            )
        return _Recomputed(set(refolded), instants)

    async def _refold(
        self,
        conn: Connection,
        keys: list[str],
        owners: dict[str, ConnectionRef],
        after: dict[str, PositionFold | None],
    ) -> list[_JournalRow]:
        """Every row of these positions, from all their fills and charges; their rows no longer
        there deleted; where each fold then stands (none for a charged position: its charges
        can land in any round trip, so it is always folded again)."""
        connections = [owners[k].connection_id for k in keys]
        fills: dict[str, list[PositionFill]] = {}
        for row in await conn.fetch(_POSITION_FILLS, keys, connections):
            fills.setdefault(row["position_key"], []).append(PositionFill(**dict(row)))
        charges: dict[str, list[PositionCharge]] = {}
        for row in await conn.fetch(_POSITION_CHARGES, keys, connections):
            charges.setdefault(row["position_key"], []).append(PositionCharge(**dict(row)))
        rows: list[_JournalRow] = []
        for key in keys:
            aggregates, fold = fold_position(key, fills.get(key, []), charges=charges.get(key, []))
            after[key] = None if charges.get(key) else fold
            rows += [_JournalRow(aggregate, owners[key]) for aggregate in aggregates]
        users = [owners[k].user_id for k in keys]
        trade_ids = [row.aggregate.trade_id for row in rows]
        await conn.execute(_DELETE_STALE_SEGMENTS, keys, users, trade_ids)
        return rows

    async def _save_folds(
        self,
        conn: Connection,
        owners: dict[str, ConnectionRef],
        after: dict[str, PositionFold | None],
    ) -> None:
        kept = {k: f for k, f in after.items() if f is not None}
        if kept:
            await conn.execute(
                _SAVE_FOLDS,
                [owners[k].connection_id for k in kept],
                list(kept),
                [owners[k].user_id for k in kept],
                [f.encoded() for f in kept.values()],
            )
        if forgotten := [k for k, f in after.items() if f is None]:
            await conn.execute(
                _FORGET_FOLDS, [owners[k].connection_id for k in forgotten], forgotten
            )

    async def _apply_balances(
        self, conn: Connection, batches: Sequence[CanonicalBatch]
    ) -> set[uuid.UUID]:
        reports = newest_snapshots(batches)
        if not reports:
            return set()
        stored = {
            row["id"]: StoredBalance(
                row["balance_as_of"], row["balance_received_at"], row["newest_deal"]
            )
            for row in await conn.fetch(_STORED_BALANCES, sorted(reports))
        }
        applied = [
            _Balance(batch, batch.account)
            for account_id, batch in sorted(reports.items())
            if account_id in stored
            and batch.account is not None
            and balance_applies(stored[account_id], batch.account, batch.received_at)
        ]
        if applied:
            await conn.execute(_APPLY_BALANCES, *BALANCES.arrays(applied))
        return {b.batch.event_id for b in applied}

    async def _record_events(
        self,
        conn: Connection,
        batches: Sequence[CanonicalBatch],
        outcomes: Sequence[EventOutcome],
    ) -> set[uuid.UUID]:
        unique = {b.event_id: _Recorded(b, o) for b, o in zip(batches, outcomes, strict=True)}
        recorded = list(unique.values())
        first_time = {
            r["event_id"] for r in await conn.fetch(_RECORD_EVENTS, *SYNC_EVENTS.arrays(recorded))
        }
        synced: dict[uuid.UUID, list[CanonicalBatch]] = {}
        for event_id in first_time:
            batch = unique[event_id].batch
            synced.setdefault(batch.connection.connection_id, []).append(batch)
        if synced:
            await self._count_syncs(conn, synced)
        return first_time

    async def _count_syncs(
        self, conn: Connection, synced: dict[uuid.UUID, list[CanonicalBatch]]
    ) -> None:
        ids = sorted(synced)
        connections = [synced[i][0].connection for i in ids]
        await conn.execute(_ENSURE_AUDIT_ROWS, *AUDIT_ROWS.arrays(connections))
        counted: list[_Synced] = []
        for row in await conn.fetch(_STORED_SYNCS, ids):
            stored = MonthlySyncs(
                row["sync_month"],
                row["monthly_sync_count"],
                row["last_sync_at"],
                row["last_event_id"],
            )
            batches = synced[row["connection_id"]]
            counted.append(
                _Synced(
                    row["connection_id"],
                    count_syncs(stored, [(b.received_at, b.event_id) for b in batches]),
                    max(b.received_at for b in batches),
                )
            )
        await conn.execute(_RECORD_SYNCS, *SYNCS.arrays(counted))
        await conn.execute(_TOUCH_CONNECTIONS, *SYNCED_CONNECTIONS.arrays(counted))


@dataclass(frozen=True)
class _Recomputed:
    """Which positions were folded again from all their fills, and the instants (account,
    when) at which the rows of the others can have closed, before this batch or now: what the
    analytics rollup refreshes."""

    refolded: set[str]
    changed_instants: set[tuple[uuid.UUID, datetime]]


@dataclass(frozen=True)
class _Inserted:
    """What an insert did: per event, how many of its records were new or changed; the
    positions they belong to; the keys newly inserted; the positions of fills changed in place
    (cancelled)."""

    per_event: dict[uuid.UUID, int]
    positions: set[str]
    new: set[str]
    changed_positions: set[str]


def _positions_of(batch: CanonicalBatch) -> set[str]:
    """The positions an event's records belong to: its fills' and its position charges'."""
    charged = {m.position_key for m in batch.cash_movements if m.position_key is not None}
    return {f.position_key for f in batch.fills} | charged
