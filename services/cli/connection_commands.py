"""`poscal-sync connections ...`: the argument parsers and the shell around the connection
operations (settings, the database connection, standard input, JSON out, errors to stderr)."""

from __future__ import annotations

import argparse
import asyncio
import sys
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TextIO

import asyncpg
import orjson

from services.cli.settings import CliSettings, MasterKeyMissing
from services.shared.brokers import broker_names
from services.shared.brokers.provisioning import ProvisioningError, ProvisioningUnavailable
from services.shared.connection_admin.connections import ConnectionRefused, create_connection
from services.shared.connection_admin.credentials import (
    add_public_key,
    revoke_public_key,
    rotate_webhook_secret,
    set_broker_credentials,
)
from services.shared.connection_admin.deletion import delete_connection
from services.shared.connection_admin.endpoints import (
    LockChange,
    lock_connection,
    rotate_webhook_url,
    unlock_connection,
)
from services.shared.connection_admin.inputs import (
    MAX_CREDENTIAL_BYTES,
    InvalidInput,
    parse_overlap,
    parse_public_key,
)
from services.shared.connection_admin.listing import list_connections
from services.shared.connection_admin.live import enable_live
from services.shared.connection_admin.terminals import (
    Progress,
    ProvisioningLimits,
    provision_connection,
    registered_services,
)
from services.shared.outbound_http import outbound_http_client
from services.shared.vault import CredentialVault

_Record = dict[str, Any]
# Brokers a connection can be created for: every broker plug-in (services/shared/brokers/).
# Those with a poll adapter (`Broker.poll`) are polled; the others push webhooks.
BROKERS = broker_names()
# A command's work in the database, returning the records it prints (as JSON lines).
_Work = Callable[[asyncpg.Connection], Awaitable[list[_Record]]]


def add_connection_commands(commands: Any) -> None:
    """The `connections` group, on the top-level parser's subcommands."""
    connections = commands.add_parser("connections", help="broker connections")
    group = connections.add_subparsers(dest="connections_command", required=True)

    create = group.add_parser(
        "create",
        help="create a connection; prints its webhook URL and secret (the secret shown once)",
    )
    create.add_argument("--user-id", type=uuid.UUID, required=True)
    create.add_argument("--broker", choices=BROKERS, default="mt5")
    create.add_argument(
        "--type",
        dest="connection_type",
        choices=("demo", "live"),
        required=True,
        help="demo or live (OANDA: practice or fxtrade host); live syncs only after enable-live",
    )
    create.add_argument(
        "--account-number", required=True, help="MT5 login, OANDA account id, IBKR account"
    )
    create.add_argument("--server", default="", help="the MT5 trade server (required for mt5)")
    create.add_argument("--label", required=True)
    create.add_argument(
        "--api-url", help="override the broker API's base URL (polled brokers: proxies, tests)"
    )
    create.add_argument(
        "--poll-interval", type=int, default=60, help="seconds between syncs (polled brokers)"
    )

    enable = group.add_parser(
        "enable-live",
        help="let a live connection sync, once a demo connection of its broker has synced",
    )
    enable.add_argument("connection_id", type=uuid.UUID, metavar="ID")

    set_credentials = group.add_parser(
        "set-credentials",
        help="store the broker sign-in credentials, read from standard input",
        description=(
            "Reads the credential from standard input (never from the command line). For mt5:"
            ' a JSON object {"login": "...", "password": "...", "server": "..."}; for token'
            " brokers: the API token. Replaces (revokes) the connection's previous broker"
            " credentials. Prints {connection_id, stored_at}, never the credential."
        ),
    )
    set_credentials.add_argument("connection_id", type=uuid.UUID, metavar="ID")

    rotate = group.add_parser(
        "rotate-secret",
        help="replace the webhook secret (prints the new one once); unlocks a locked connection",
        description=(
            "Generates a new webhook secret and prints it once. The secrets it replaces keep"
            " verifying until the overlap ends, so the sender can switch without losing"
            " deliveries. Rotating clears a forced-rotation mark and unlocks a connection an"
            " operator locked (its old secret, suspect, then stops at once)."
        ),
    )
    rotate.add_argument("connection_id", type=uuid.UUID, metavar="ID")
    rotate.add_argument(
        "--overlap",
        default=None,
        help=(
            "how long the replaced secrets keep verifying: 24h, 30m, 90s, 2d, or 0 (default"
            " 24h; 0 for a locked connection, whose old secret is suspect)"
        ),
    )

    rotate_url = group.add_parser(
        "rotate-url",
        help="give the connection a new webhook URL (printed); the old one stops at once",
        description=(
            "For a URL that leaked: its strangers' requests stop reaching the connection at"
            " all. The connection, its journal, fills, audit and event ids are unchanged; only"
            " the sender's URL must be updated."
        ),
    )
    rotate_url.add_argument("connection_id", type=uuid.UUID, metavar="ID")

    lock = group.add_parser(
        "lock",
        help="stop accepting the connection's webhooks, even correctly signed ones (423)",
        description=(
            "For a secret suspected stolen. Ingest never locks by itself: failed verifications"
            " only throttle the address that sends them. `unlock` or rotate-secret ends it."
        ),
    )
    lock.add_argument("connection_id", type=uuid.UUID, metavar="ID")
    lock.add_argument("--reason", help="why, kept as the connection's last_error")

    unlock = group.add_parser("unlock", help="accept a locked connection's webhooks again")
    unlock.add_argument("connection_id", type=uuid.UUID, metavar="ID")

    public_key = group.add_parser(
        "add-public-key", help="add an Ed25519 key (whpk_...) that verifies v1a webhook signatures"
    )
    public_key.add_argument("connection_id", type=uuid.UUID, metavar="ID")
    public_key.add_argument("--key", required=True, help="whpk_ followed by base64 of 32 bytes")

    revoke_key = group.add_parser(
        "revoke-public-key", help="stop an Ed25519 key (whpk_...) verifying v1a signatures"
    )
    revoke_key.add_argument("connection_id", type=uuid.UUID, metavar="ID")
    revoke_key.add_argument("--key", required=True, help="whpk_ followed by base64 of 32 bytes")

    provision = group.add_parser(
        "provision",
        help="make a cloud-synced connection's terminal (MT5: MetaApi) and wait until it syncs",
        description=(
            "Creates the connection's cloud terminal from its stored credentials (MT5: login,"
            " investor password, server), deploys it and waits until it is connected to the"
            " broker, printing each step to stderr; then the connection is polled. Run it"
            " again after a timeout (it carries on) or after set-credentials (it replaces the"
            " terminal). Refusals print {error, detail} and exit 1 (wrong password, unknown"
            " server, the other trade mode), or 3 when the service or broker cannot now."
        ),
    )
    provision.add_argument("connection_id", type=uuid.UUID, metavar="ID")
    provision.add_argument(
        "--timeout", type=float, default=600.0, help="seconds to wait for the terminal in all"
    )
    provision.add_argument(
        "--poll-interval", type=int, default=60, help="seconds between syncs once it is ready"
    )

    delete = group.add_parser(
        "delete",
        help="delete a connection: its cloud terminal removed, its credentials destroyed",
    )
    delete.add_argument("connection_id", type=uuid.UUID, metavar="ID")

    listing = group.add_parser(
        "list",
        help="connections as JSON lines: webhook URL, health, credential rotation state",
        description=(
            "rotation is ok, warning (a kind's newest active credential is over 60 days old),"
            " due (over 90 days) or forced (suspicious activity marked it; see rotation_reason)."
        ),
    )
    listing.add_argument(
        "--rotation-due", action="store_true", help="only connections whose rotation is not ok"
    )
    listing.add_argument("--user-id", type=uuid.UUID)


def run_connection_command(args: argparse.Namespace, settings: CliSettings, stdin: TextIO) -> int:
    """Errors go to stderr: 1 when the command is refused, 2 when settings are missing."""
    try:
        work = _work(args, settings, stdin)
    except (MasterKeyMissing, ValueError) as exc:  # InvalidInput is a ValueError too
        print(f"error: {exc}", file=sys.stderr)
        return 1 if isinstance(exc, InvalidInput) else 2
    return asyncio.run(_execute(settings, work))


def _work(args: argparse.Namespace, settings: CliSettings, stdin: TextIO) -> _Work:
    """What the command does in the database, once its input is checked."""
    command: str = args.connections_command
    if command == "list":
        return lambda conn: _list(conn, settings.ingest_url, args.user_id, args.rotation_due)
    vault = CredentialVault(settings.key_ring())
    match command:
        case "create":
            return lambda conn: _create(conn, vault, settings, args)
        case "enable-live":
            return lambda conn: _enable_live(conn, args.connection_id)
        case "set-credentials":
            text = _read_credential(stdin)
            return lambda conn: _set_credentials(conn, vault, args.connection_id, text)
        case "rotate-secret":
            overlap = None if args.overlap is None else parse_overlap(args.overlap)
            return lambda conn: _rotate_secret(conn, vault, args.connection_id, overlap)
        case "rotate-url":
            return lambda conn: _rotate_url(conn, args.connection_id, settings.ingest_url)
        case "lock":
            return lambda conn: _lock(conn, args.connection_id, args.reason)
        case "unlock":
            return lambda conn: _unlock(conn, args.connection_id)
        case "add-public-key":
            raw_key = parse_public_key(args.key)
            return lambda conn: _add_public_key(conn, vault, args.connection_id, raw_key)
        case "revoke-public-key":
            raw_key = parse_public_key(args.key)
            return lambda conn: _revoke_public_key(conn, vault, args.connection_id, raw_key)
        case "provision":
            return lambda conn: _provision(conn, vault, args)
        case "delete":
            return lambda conn: _delete(conn, args.connection_id)
    raise AssertionError(f"unhandled connections command {command!r}")


def _read_credential(stdin: TextIO) -> str:
    if stdin.isatty():
        print("reading the credential from standard input; end with Ctrl-D", file=sys.stderr)
    return stdin.read(MAX_CREDENTIAL_BYTES + 1)


async def _execute(settings: CliSettings, work: _Work) -> int:
    conn = await asyncpg.connect(settings.database_url.get_secret_value())
    try:
        records = await work(conn)
    except (ConnectionRefused, InvalidInput) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except ProvisioningError as exc:
        # What a wizard would show: the code for a program, the message for the person.
        print(orjson.dumps({"error": exc.code, "detail": exc.message}).decode(), flush=True)
        print(f"error: {exc.message}", file=sys.stderr)
        return 3 if isinstance(exc, ProvisioningUnavailable) else 1
    finally:
        await conn.close()
    for record in records:
        print(orjson.dumps(record, default=_uuid_as_text).decode(), flush=True)
    return 0


def _uuid_as_text(value: object) -> str:
    # asyncpg's UUIDs subclass uuid.UUID, which orjson serialises only as the exact type.
    if isinstance(value, uuid.UUID):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not printable as JSON")


async def _create(
    conn: asyncpg.Connection, vault: CredentialVault, settings: CliSettings, args: Any
) -> list[_Record]:
    created = await create_connection(
        conn,
        vault,
        user_id=args.user_id,
        broker=args.broker,
        connection_type=args.connection_type,
        account_number=args.account_number,
        server=args.server,
        account_label=args.label,
        ingest_url=settings.ingest_url,
        api_url=args.api_url,
        poll_interval_seconds=args.poll_interval,
    )
    record: _Record = {
        "connection_id": created.connection_id,
        "account_id": created.account_id,
        "webhook_url": created.webhook_url,
        "webhook_secret": created.webhook_secret,
        "polled": created.polled,
    }
    next_steps = []
    if created.polled:
        next_steps.append("store its credentials: poscal-sync connections set-credentials ID")
    elif args.broker == "mt5":
        next_steps.append(
            "webhooks: the Expert Advisor; or cloud sync: set-credentials ID (login, investor"
            " password, server), then connections provision ID"
        )
    if args.connection_type == "live":
        next_steps.append("enable it once a demo connection has synced: connections enable-live ID")
    if next_steps:
        record["next"] = next_steps
    return [record]


async def _enable_live(conn: asyncpg.Connection, connection_id: uuid.UUID) -> list[_Record]:
    return [
        {"connection_id": connection_id, "live_enabled_at": await enable_live(conn, connection_id)}
    ]


async def _set_credentials(
    conn: asyncpg.Connection, vault: CredentialVault, connection_id: uuid.UUID, text: str
) -> list[_Record]:
    stored = await set_broker_credentials(conn, vault, connection_id, text)
    return [{"connection_id": stored.connection_id, "stored_at": stored.stored_at}]


async def _rotate_secret(
    conn: asyncpg.Connection,
    vault: CredentialVault,
    connection_id: uuid.UUID,
    overlap: timedelta | None,
) -> list[_Record]:
    rotated = await rotate_webhook_secret(conn, vault, connection_id, overlap)
    return [
        {
            "connection_id": rotated.connection_id,
            "webhook_secret": rotated.webhook_secret,
            "previous_secrets_expire_at": rotated.previous_secrets_expire_at,
        }
    ]


async def _rotate_url(
    conn: asyncpg.Connection, connection_id: uuid.UUID, ingest_url: str
) -> list[_Record]:
    rotated = await rotate_webhook_url(conn, connection_id, ingest_url)
    return [{"connection_id": rotated.connection_id, "webhook_url": rotated.webhook_url}]


def _lock_record(change: LockChange) -> _Record:
    return {
        "connection_id": change.connection_id,
        "lifecycle": change.lifecycle,
        "locked_at": change.locked_at,
        "changed": change.changed,
    }


async def _lock(
    conn: asyncpg.Connection, connection_id: uuid.UUID, reason: str | None
) -> list[_Record]:
    return [_lock_record(await lock_connection(conn, connection_id, reason))]


async def _unlock(conn: asyncpg.Connection, connection_id: uuid.UUID) -> list[_Record]:
    return [_lock_record(await unlock_connection(conn, connection_id))]


async def _add_public_key(
    conn: asyncpg.Connection, vault: CredentialVault, connection_id: uuid.UUID, raw_key: bytes
) -> list[_Record]:
    added = await add_public_key(conn, vault, connection_id, raw_key)
    return [{"connection_id": added.connection_id, "added_at": added.stored_at}]


async def _list(
    conn: asyncpg.Connection, ingest_url: str, user_id: uuid.UUID | None, rotation_due: bool
) -> list[_Record]:
    return await list_connections(
        conn, datetime.now(UTC), ingest_url, user_id=user_id, rotation_due_only=rotation_due
    )


async def _revoke_public_key(
    conn: asyncpg.Connection, vault: CredentialVault, connection_id: uuid.UUID, raw_key: bytes
) -> list[_Record]:
    revoked_at = await revoke_public_key(conn, vault, connection_id, raw_key)
    return [{"connection_id": connection_id, "revoked_at": revoked_at}]


def _progress(step: Progress) -> None:
    state = f" [{step.state}, {step.connection_status}]" if step.state else ""
    print(f"{step.step}: {step.detail}{state}", file=sys.stderr, flush=True)


async def _provision(conn: asyncpg.Connection, vault: CredentialVault, args: Any) -> list[_Record]:
    async with outbound_http_client(30.0) as http:
        done = await provision_connection(
            conn,
            vault,
            args.connection_id,
            registered_services(http),
            poll_interval_seconds=args.poll_interval,
            limits=ProvisioningLimits(timeout_seconds=args.timeout),
            progress=_progress,
        )
    return [
        {
            "connection_id": done.connection_id,
            "provider": done.terminal.provider,
            "terminal_id": done.terminal.account_id,
            "region": done.terminal.region,
            "account": done.account,
            "ready_at": done.ready_at,
        }
    ]


async def _delete(conn: asyncpg.Connection, connection_id: uuid.UUID) -> list[_Record]:
    async with outbound_http_client(30.0) as http:
        deleted = await delete_connection(conn, connection_id, registered_services(http))
    return [
        {
            "connection_id": deleted.connection_id,
            "deleted": True,
            "removed_terminal": deleted.removed_terminal,
            "credentials_destroyed": deleted.credentials_destroyed,
        }
    ]
