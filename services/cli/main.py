"""`poscal-sync`: run the services, the dev stack, migrations; manage connections and keys."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import orjson

from services.cli.api_commands import add_api_commands
from services.cli.connection_commands import add_connection_commands
from services.cli.dead_letter_commands import add_dead_letter_commands
from services.cli.import_report import add_import_commands
from services.cli.key_commands import add_key_commands
from services.cli.reconcile_command import add_reconcile_command
from services.shared.brokers import broker_names

DEFAULT_STATE_DIR = Path(".poscal/dev")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="poscal-sync", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    dev = commands.add_parser(
        "dev", help="run the whole pipeline on an embedded Postgres and broker"
    )
    dev.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR)
    dev.add_argument("--port", type=int, default=8080, help="ingest's HTTP port (0: any free)")
    dev.add_argument(
        "--api-port", type=int, default=8090, help="the app API's HTTP port (0: any free)"
    )
    dev.add_argument(
        "--demo",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="create a demo connection and stream signed MT5 webhooks through it",
    )
    dev.add_argument("--demo-positions", type=int, default=24, help=argparse.SUPPRESS)
    dev.add_argument(
        "--exit-after-demo", action="store_true", help="stop the stack once the demo has finished"
    )

    commands.add_parser("migrate", help="apply pending SQL migrations to DATABASE_URL")
    commands.add_parser(
        "export-schemas", help="write the topic contracts and the OpenAPI documents to schemas/"
    )
    commands.add_parser("ingest", help="run the webhook ingest HTTP service")
    commands.add_parser("normalizer", help="run the normalizer consumer")
    commands.add_parser("writer", help="run the journal writer consumer")
    commands.add_parser(
        "poller", help="run the broker poller (OANDA, IBKR Flex, MT5 through MetaApi)"
    )
    add_api_commands(commands, DEFAULT_STATE_DIR)

    normalize = commands.add_parser(
        "normalize",
        help="print the canonical events a broker payload would become (no Kafka, no Postgres)",
    )
    normalize.add_argument("--broker", required=True, choices=broker_names())
    normalize.add_argument(
        "--account-number",
        default=None,
        help="the account the payload must belong to (default: read from it)",
    )
    normalize.add_argument("file", type=Path)

    traces = commands.add_parser("traces", help="print recent traces as trees with durations")
    traces.add_argument("--last", type=int, default=5)
    traces.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR)

    users = commands.add_parser("users", help="users of the plain-Postgres auth shim")
    user_commands = users.add_subparsers(dest="users_command", required=True)
    create_user = user_commands.add_parser("create", help="create (or find) a user by email")
    create_user.add_argument("--email", required=True)

    add_connection_commands(commands)
    add_key_commands(commands)
    add_import_commands(commands)
    add_dead_letter_commands(commands)
    add_reconcile_command(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    match args.command:
        case "ingest":
            from services.ingest.main import main as ingest_main

            return ingest_main()
        case "normalizer":
            from services.normalizer.main import main as normalizer_main

            return normalizer_main()
        case "writer":
            from services.writer.main import main as writer_main

            return writer_main()
        case "poller":
            from services.poller.main import main as poller_main

            return poller_main()
        case "api":
            from services.cli.api_commands import run_api_command

            return run_api_command(args, os.environ, sys.stdout, sys.stderr)
        case "migrate":
            return _migrate()
        case "export-schemas":
            from services.api.openapi import export as export_api_openapi
            from services.ingest.openapi import export as export_openapi
            from services.shared.contracts import export

            for path in [*export(), export_openapi(), export_api_openapi()]:
                print(path)
            return 0
        case "dev":
            from services.cli.dev import run_dev

            return run_dev(
                args.state_dir,
                args.port,
                args.demo,
                args.demo_positions,
                args.exit_after_demo,
                args.api_port,
            )
        case "normalize":
            from services.cli.normalize import run_normalize

            return run_normalize(args.broker, args.file, sys.stdout, args.account_number)
        case "traces":
            from services.cli.traces import run

            return run(args.state_dir / "traces", args.last, sys.stdout)
        case "users":
            return asyncio.run(_create_user(args.email))
        case "connections":
            from services.cli.connection_commands import run_connection_command
            from services.cli.settings import CliSettings

            return run_connection_command(args, CliSettings(), sys.stdin)
        case "keys":
            from services.cli.key_commands import run_key_command
            from services.cli.settings import CliSettings

            return run_key_command(args, CliSettings())
        case "import":
            from services.cli.import_report import run_import_command
            from services.cli.settings import CliSettings

            return run_import_command(args, CliSettings())
        case "reconcile":
            from services.cli.reconcile_command import run_reconcile_command
            from services.cli.settings import CliSettings

            return run_reconcile_command(args, CliSettings(), sys.stdout, sys.stderr)
        case "dead-letters":
            from services.cli.dead_letter_commands import run_dead_letter_command
            from services.cli.settings import CliSettings

            return run_dead_letter_command(args, CliSettings(), sys.stdout, sys.stderr)
    return 2


def _migrate() -> int:
    from services.cli.settings import CliSettings
    from services.shared.migrations import apply_migrations

    settings = CliSettings()
    applied = asyncio.run(apply_migrations(settings.database_url.get_secret_value()))
    print(f"applied {len(applied)} migration(s)" + (f": {', '.join(applied)}" if applied else ""))
    return 0


async def _create_user(email: str) -> int:
    import asyncpg

    from services.cli.settings import CliSettings
    from services.shared.connection_admin.connections import create_user

    conn = await asyncpg.connect(CliSettings().database_url.get_secret_value())
    try:
        print(orjson.dumps({"user_id": str(await create_user(conn, email))}).decode())
    finally:
        await conn.close()
    return 0
