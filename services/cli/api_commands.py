"""`poscal-sync api`: run the app API; `poscal-sync api token`: mint an access token for a user,
signed with the HS256 secret the local API verifies (development only: Supabase Auth issues the
real ones)."""

from __future__ import annotations

import argparse
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TextIO

JWT_SECRET_VARIABLE = "POSCAL_API_JWT_SECRET"  # noqa: S105 - a variable name, not a secret
ISSUER_VARIABLE = "POSCAL_API_JWT_ISSUER"
MAX_MINUTES = 24 * 60


def _minutes(text: str) -> int:
    value = int(text)
    if not 1 <= value <= MAX_MINUTES:
        raise argparse.ArgumentTypeError(f"from 1 to {MAX_MINUTES}")
    return value


def add_api_commands(commands: Any, default_state_dir: Path) -> None:
    """The `api` command and its `token` subcommand, on the top-level parser's subcommands."""
    api = commands.add_parser(
        "api",
        help="run the app API the PosCal frontend calls (POSCAL_API_* settings)",
        description="Without a subcommand: run the app API until signalled.",
    )
    group = api.add_subparsers(dest="api_command", metavar="SUBCOMMAND")
    token = group.add_parser(
        "token",
        help="print an access token for a user, signed with POSCAL_API_JWT_SECRET (development)",
        description=(
            f"Signs with ${JWT_SECRET_VARIABLE}, else the one `poscal-sync dev` wrote to"
            " STATE_DIR/stack.env; adds $POSCAL_API_JWT_ISSUER as `iss` when set."
        ),
    )
    token.add_argument("--user-id", type=uuid.UUID, required=True)
    token.add_argument(
        "--minutes", type=_minutes, default=60, help="how long the token is valid (60)"
    )
    token.add_argument("--state-dir", type=Path, default=default_state_dir)


def run_api_command(
    args: argparse.Namespace, environ: Mapping[str, str], out: TextIO, err: TextIO
) -> int:
    if args.api_command is None:
        from services.api.main import main

        return main()
    from services.api.settings import MIN_SECRET_BYTES
    from services.api.tokens import mint_token

    secret = environ.get(JWT_SECRET_VARIABLE) or _stack_env(args.state_dir).get(JWT_SECRET_VARIABLE)
    if not secret:
        print(
            f"error: set {JWT_SECRET_VARIABLE}, or run `poscal-sync dev` (it writes one to"
            f" {args.state_dir / 'stack.env'})",
            file=err,
        )
        return 2
    if len(secret.encode()) < MIN_SECRET_BYTES:
        print(f"error: {JWT_SECRET_VARIABLE} must be {MIN_SECRET_BYTES} bytes or more", file=err)
        return 2
    token = mint_token(
        secret,
        args.user_id,
        now=datetime.now(UTC),
        lifetime=timedelta(minutes=args.minutes),
        issuer=environ.get(ISSUER_VARIABLE) or None,
    )
    print(token, file=out)
    return 0


def _stack_env(state_dir: Path) -> dict[str, str]:
    path = state_dir / "stack.env"
    if not path.is_file():
        return {}
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
