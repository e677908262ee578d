"""`poscal-sync reconcile [--connection ID]`: the shell around services/shared/reconciling.py
(settings, Postgres, Kafka, an HTTP client), printing each connection's result."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import uuid
from typing import Any, TextIO

import orjson

from services.cli.settings import CliSettings, MasterKeyMissing
from services.shared.database import create_pool
from services.shared.kafka import create_producer, started
from services.shared.outbound_http import outbound_http_client
from services.shared.publishing import RawEventPublisher
from services.shared.reconciliation import Reconciliation, reconciliation_report
from services.shared.reconciling import Reconciler
from services.shared.vault import CredentialVault

GAPS_FOUND = 4
COULD_NOT_COMPARE = 3


def add_reconcile_command(commands: Any) -> None:
    reconcile = commands.add_parser(
        "reconcile",
        help="compare brokers' history and balances with the journal; fetch what is missing",
        description=(
            "Polled connections: the broker's history is read again and pages holding deals no"
            " fill or movement is are published for the pipeline to write. MT5 webhook"
            " connections: the reported balance is compared with deposits + realized P&L -"
            " charges over the recorded deals, rounded to the currency's minor unit. Each"
            " result is kept for the connection's status. Exits 4 when gaps were found, 3 when"
            " some connection could not be compared."
        ),
    )
    reconcile.add_argument(
        "--connection", action="append", type=uuid.UUID, default=[], metavar="ID"
    )
    reconcile.add_argument("--json", action="store_true", help="one JSON object per connection")


def run_reconcile_command(
    args: argparse.Namespace, settings: CliSettings, out: TextIO, err: TextIO
) -> int:
    try:
        vault: CredentialVault | None = CredentialVault(settings.key_ring())
    except MasterKeyMissing:
        vault = None  # webhook connections still reconcile; polled ones say what is missing
    except ValueError as exc:
        print(f"error: {exc}", file=err)
        return 2
    found = asyncio.run(_reconcile(settings, vault, args.connection or None))
    for result in found:
        report = reconciliation_report(result)
        out.write(orjson.dumps(report).decode() + "\n" if args.json else render(report))
    if any(r.result == "failed" for r in found):
        return COULD_NOT_COMPARE
    return GAPS_FOUND if any(r.gaps for r in found) else 0


async def _reconcile(
    settings: CliSettings, vault: CredentialVault | None, ids: list[uuid.UUID] | None
) -> list[Reconciliation]:
    async with contextlib.AsyncExitStack() as stack:
        pool = await create_pool(settings.database_url.get_secret_value(), max_size=2)
        stack.push_async_callback(pool.close)
        producer = await started(
            create_producer(settings.kafka_bootstrap_servers, "poscal-reconcile")
        )
        stack.push_async_callback(producer.stop)
        http = await stack.enter_async_context(outbound_http_client(30.0))
        reconciler = Reconciler(
            pool, vault, http, RawEventPublisher(producer, settings.topics.raw, 10.0)
        )
        found = []
        for target in await reconciler.targets(ids):
            result = await reconciler.reconcile(target)
            await reconciler.record(target, result, 0, scheduled=False)
            found.append(result)
        return found


def render(report: dict[str, Any]) -> str:
    """One connection's result for a person."""
    line = f"{report['connection_id']}  {report['broker']}  {report['method']}: {report['result']}"
    if "missing_deals" in report:
        line += f"; {len(report['missing_deals'])} deals missing, {report['fetched_deals']} fetched"
    if "balance" in report:
        b = report["balance"]
        line += (
            f"; balance reported {b['reported']}, recorded {b['computed']}"
            f" {b['currency'] or ''}, drift {b['drift']}".replace("  ", " ")
        )
    for key in ("error", "note"):
        if key in report:
            line += f"; {report[key]}"
    return line + "\n"
