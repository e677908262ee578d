"""`poscal-sync keys ...`: a new master key, and re-wrapping data keys under the current one."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

import asyncpg
import orjson

from services.cli.keys import KeyRotationRefused, rotate_data_keys
from services.cli.settings import CliSettings, MasterKeyMissing
from services.shared.crypto import new_master_key_base64
from services.shared.keyring import KeyRing

RUNBOOK = """\
Rotating the master key (the key-encryption key), with no downtime:
  1. `poscal-sync keys new`; deploy every service and this CLI with the new key as
     POSCAL_MASTER_KEY and the old one in POSCAL_PREVIOUS_MASTER_KEYS (comma-separated);
  2. run `poscal-sync keys rotate` until it prints "remaining": 0 (interrupting it loses
     nothing; run it again to continue; two runs at once are safe);
  3. remove the old key from POSCAL_PREVIOUS_MASTER_KEYS and deploy again.
"""


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be 1 or more")
    return value


def add_key_commands(commands: Any) -> None:
    """The `keys` group, on the top-level parser's subcommands."""
    keys = commands.add_parser(
        "keys",
        help="the master key: make a new one, re-wrap data keys under it",
        description=RUNBOOK,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    group = keys.add_subparsers(dest="keys_command", required=True)
    group.add_parser("new", help="print a fresh master key (base64 of 32 random bytes)")
    rotate = group.add_parser(
        "rotate",
        help="re-wrap every data key under POSCAL_MASTER_KEY; prints counts as JSON",
        description=RUNBOOK,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    rotate.add_argument(
        "--limit", type=_positive, help="re-wrap at most this many data keys in this run"
    )


def run_key_command(args: argparse.Namespace, settings: CliSettings) -> int:
    if args.keys_command == "new":
        print(new_master_key_base64())
        return 0
    try:
        keys = settings.key_ring()
    except (MasterKeyMissing, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return asyncio.run(_rotate(settings, keys, args.limit))


async def _rotate(settings: CliSettings, keys: KeyRing, limit: int | None) -> int:
    conn = await asyncpg.connect(settings.database_url.get_secret_value())
    try:
        report = await rotate_data_keys(conn, keys, limit=limit)
    except KeyRotationRefused as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        await conn.close()
    print(
        orjson.dumps(
            {
                "kek_id": keys.key_id,
                "rewrapped": report.rewrapped,
                "already_current": report.already_current,
                "remaining": report.remaining,
            }
        ).decode()
    )
    return 0
