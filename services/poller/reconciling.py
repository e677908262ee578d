"""The poller's scheduled reconciliations: each tick, lease the connections due (another replica
never gets the same one), reconcile them one at a time, record each result with its next due
time, and export how many connections have each kind of gap."""

from __future__ import annotations

import asyncio

from services.poller.metrics import RECONCILIATION_GAPS
from services.shared.logging import get_logger
from services.shared.reconciling import Reconciler

_log = get_logger("poscal.poller.reconciliation")


async def reconcile_due(
    reconciler: Reconciler, owner: str, interval_seconds: float, lease_seconds: float
) -> int:
    """One round: reconciles what is due (a few at a time); returns how many."""
    done = 0
    for target in await reconciler.lease_due(owner, 4, lease_seconds, interval_seconds):
        found = await reconciler.reconcile(target)
        await reconciler.record(target, found, interval_seconds, scheduled=True)
        done += 1
        log = _log.bind(connection_id=str(target.connection.connection_id))
        if found.gaps:
            log.error(
                "ALERT reconciliation found gaps",
                alert="reconciliation_gaps",
                broker=target.connection.broker,
                gaps=list(found.gaps),
            )
        elif found.error is not None:
            log.warning("reconciliation could not compare", reason=found.error)
    for (broker, kind), count in (await reconciler.gap_counts()).items():
        RECONCILIATION_GAPS.labels(broker, kind).set(count)
    return done


async def run_reconciliations(
    reconciler: Reconciler,
    stop: asyncio.Event,
    *,
    owner: str,
    interval_seconds: float,
    lease_seconds: float,
    tick_seconds: float,
) -> None:
    """Until `stop`: a round each tick; a failed round (the database away) is tried next tick."""
    while not stop.is_set():
        try:
            await reconcile_due(reconciler, owner, interval_seconds, lease_seconds)
        except Exception as exc:
            _log.warning("reconciliation round failed", cause=type(exc).__name__)
        try:
            await asyncio.wait_for(stop.wait(), timeout=tick_seconds)
        except TimeoutError:
            continue
