"""`poscal-sync import mt5-report`: a terminal's history report onto the raw topic as the
connection's deals, once the report is shown to be that connection's account."""

from __future__ import annotations

import argparse
import asyncio
import sys
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import asyncpg
import orjson

from services.cli.settings import CliSettings
from services.shared.brokers.mt5.report import CheckedRows, check_rows, report_payloads
from services.shared.brokers.mt5.report_deals import (
    MarginMode,
    ReportAccount,
    ReportDeals,
    report_deals,
)
from services.shared.brokers.mt5.report_file import UnreadableReport, read_report
from services.shared.brokers.mt5.server_clock import NEW_YORK_CLOSE, ServerClock, server_clock
from services.shared.envelope import ConnectionRef, RawEvent
from services.shared.errors import TransientError
from services.shared.kafka import create_producer
from services.shared.publishing import RawEventPublisher, RawEventSink

MAX_FILE_BYTES = 64 * 1024 * 1024
_PUBLISH_TIMEOUT_SECONDS = 30.0
_CONNECTION = """
SELECT id, user_id, account_id, broker, connection_type, account_number, server, lifecycle,
       live_enabled_at
FROM mt5_connections WHERE id = $1
"""
# A locked, paused or deleted connection takes no import (ingest takes no webhook from the last
# two, and accepts a locked one's only to refuse it).
_IMPORTABLE = ("active",)
# The report's account type against the connection's.
_TRADE_MODES = {"demo": "demo", "contest": "demo", "real": "live"}
# Exit statuses: everything imported; refused (nothing published) or the topic did not take it
# all; imported, but rows the journal cannot take were left out (listed on stderr).
IMPORTED, REFUSED, PARTLY_IMPORTED = 0, 1, 3


class ImportRefused(Exception):
    """The report cannot be imported into this connection; nothing was published."""


class _Unpublished(TransientError):
    """The raw topic did not acknowledge every event; `published` of them it did."""

    def __init__(self, cause: TransientError, published: int) -> None:
        super().__init__(str(cause))
        self.published = published


def add_import_commands(commands: Any) -> None:
    imports = commands.add_parser("import", help="import what a broker's own export says")
    kinds = imports.add_subparsers(dest="import_command", required=True)
    report = kinds.add_parser(
        "mt5-report",
        help="an MT5 terminal's history report (HTML or XLSX) as the connection's deals",
    )
    report.add_argument("--connection", required=True, type=uuid.UUID, metavar="ID")
    report.add_argument(
        "--server-tz",
        metavar="ZONE",
        help=f"the trade server's clock, which the report's times are in: {NEW_YORK_CLOSE} "
        "(UTC+2, UTC+3 while New York keeps summer time: most MT5 servers), a fixed offset "
        "such as UTC+3, or an IANA zone such as Europe/Nicosia",
    )
    report.add_argument(
        "--margin-mode",
        choices=("hedging", "netting"),
        default=None,
        help="the account's, when the report's header does not say (older reports)",
    )
    report.add_argument("file", type=Path)


@dataclass(frozen=True)
class ImportOutcome:
    """What an import did, as printed."""

    connection_id: uuid.UUID
    file: str
    account: ReportAccount
    rows: CheckedRows
    events: tuple[str, ...]

    def summary(self) -> dict[str, Any]:
        return {
            "connection_id": str(self.connection_id),
            "file": self.file,
            "login": self.account.login,
            "company": self.account.company,
            "deals_read": len(self.rows.accepted) + len(self.rows.refused),
            "deals_imported": len(self.rows.accepted),
            "deals_refused": len(self.rows.refused),
            "events_published": len(self.events),
            "refused": [
                {"row": r.row, "deal": r.deal, "code": r.code, "detail": r.detail}
                for r in self.rows.refused
            ],
        }


def run_import_command(args: argparse.Namespace, settings: CliSettings) -> int:
    return asyncio.run(
        import_report(
            settings,
            connection_id=args.connection,
            path=args.file,
            clock_spec=args.server_tz,
            margin_mode=args.margin_mode,
            out=sys.stdout,
            err=sys.stderr,
        )
    )


async def import_report(
    settings: CliSettings,
    *,
    connection_id: uuid.UUID,
    path: Path,
    clock_spec: str | None,
    margin_mode: MarginMode | None,
    out: TextIO,
    err: TextIO,
    sink: RawEventSink | None = None,
) -> int:
    """Read, check, publish (to `sink`, or the raw topic); the exit status."""
    try:
        clock = _clock(clock_spec)
        deals = _read(path, margin_mode)
        connection = await _connection(settings, connection_id)
        _check_account(deals.account, connection)
    except ImportRefused as exc:
        print(f"error: {exc}", file=err)
        return REFUSED
    received_at = datetime.now(UTC)
    rows = check_rows(deals, clock, received_at)
    for refused in rows.refused:
        print(
            f"{path.name}: row {refused.row} (deal {refused.deal or '?'}) not imported: "
            f"{refused.code}: {refused.detail}",
            file=err,
        )
    events = _events(deals, rows, connection, clock, path, received_at)
    try:
        published = await _publish(settings, events, sink) if events else ()
    except _Unpublished as exc:
        print(
            f"error: {exc}; {exc.published} of {len(events)} events were published "
            "(importing the report again is safe: it is the same deliveries)",
            file=err,
        )
        return REFUSED
    outcome = ImportOutcome(connection_id, path.name, deals.account, rows, published)
    out.write(orjson.dumps(outcome.summary(), option=orjson.OPT_INDENT_2).decode() + "\n")
    return PARTLY_IMPORTED if rows.refused else IMPORTED


def _clock(spec: str | None) -> ServerClock:
    if spec is None:
        # Neither the report nor the connection says which zone the server's clock keeps.
        raise ImportRefused(
            "the report's times are the trade server's wall clock, and which zone that is must "
            f"be given: --server-tz {NEW_YORK_CLOSE} (most MT5 servers), a fixed offset such "
            "as UTC+3, or an IANA zone"
        )
    try:
        return server_clock(spec)
    except ValueError as exc:
        raise ImportRefused(f"--server-tz: {exc}") from None


def _read(path: Path, margin_mode: MarginMode | None) -> ReportDeals:
    try:
        with path.open("rb") as file:
            data = file.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise ImportRefused(f"cannot read {path}: {exc.strerror or exc}") from None
    if len(data) > MAX_FILE_BYTES:
        raise ImportRefused(f"{path} is larger than {MAX_FILE_BYTES} bytes")
    try:
        return report_deals(read_report(data), margin_mode)
    except UnreadableReport as exc:
        raise ImportRefused(f"{path} is not an MT5 history report: {exc}") from None


async def _connection(settings: CliSettings, connection_id: uuid.UUID) -> ConnectionRef:
    conn = await asyncpg.connect(settings.database_url.get_secret_value())
    try:
        row = await conn.fetchrow(_CONNECTION, connection_id)
    finally:
        await conn.close()
    if row is None:
        raise ImportRefused(f"no connection {connection_id}")
    if row["broker"] != "mt5":
        raise ImportRefused(
            f"connection {connection_id} is a {row['broker']} connection, not an MT5 one"
        )
    if row["lifecycle"] not in _IMPORTABLE:
        raise ImportRefused(f"connection {connection_id} is {row['lifecycle']}")
    if row["connection_type"] == "live" and row["live_enabled_at"] is None:
        raise ImportRefused(f"connection {connection_id} is live and not yet enabled for live")
    return ConnectionRef.from_row(row)


def _check_account(account: ReportAccount, connection: ConnectionRef) -> None:
    """The report must be of the connection's account: same login, same server where the report
    names one, same kind of account (demo or real)."""
    problems = []
    if str(account.login) != connection.account_number:
        problems.append(f"login {account.login}, the connection's is {connection.account_number}")
    if account.server is not None and account.server != connection.server:
        problems.append(f"server {account.server!r}, the connection's is {connection.server!r}")
    kind = _TRADE_MODES.get(account.trade_mode or "")
    if kind is not None and kind != connection.connection_type:
        problems.append(
            f"a {account.trade_mode} account, the connection is {connection.connection_type}"
        )
    if problems:
        raise ImportRefused("the report is not this connection's account: " + "; ".join(problems))
    if not connection.server:
        raise ImportRefused("the connection has no server: its deals' keys would match nothing")


def _events(
    deals: ReportDeals,
    rows: CheckedRows,
    connection: ConnectionRef,
    clock: ServerClock,
    path: Path,
    received_at: datetime,
) -> list[RawEvent]:
    assert connection.server is not None
    return [
        RawEvent.wrap(
            source="import",
            connection=connection,
            received_at=received_at,
            delivery_id=delivery_id,
            body=body,
        )
        for delivery_id, body in report_payloads(
            deals, rows.accepted, server=connection.server, clock=clock, file=path.name
        )
    ]


async def _publish(
    settings: CliSettings, events: Sequence[RawEvent], sink: RawEventSink | None
) -> tuple[str, ...]:
    """Each event in order, acknowledged before the next; their delivery ids."""
    if sink is not None:
        return await _publish_to(sink, events)
    producer = create_producer(settings.kafka_bootstrap_servers, "poscal-import")
    try:
        await producer.start()
    except Exception as exc:
        await producer.stop()
        cause = TransientError(f"the broker is not reachable: {type(exc).__name__}")
        raise _Unpublished(cause, 0) from exc
    try:
        publisher = RawEventPublisher(producer, settings.topics.raw, _PUBLISH_TIMEOUT_SECONDS)
        return await _publish_to(publisher, events)
    finally:
        await producer.stop()


async def _publish_to(sink: RawEventSink, events: Sequence[RawEvent]) -> tuple[str, ...]:
    for published, event in enumerate(events):
        try:
            await sink.publish(event)
        except TransientError as exc:
            raise _Unpublished(exc, published) from exc
    return tuple(event.delivery_id for event in events)
