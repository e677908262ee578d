"""`poscal-sync normalize`: one broker payload file through its mapper, printed as JSON lines.

Nothing is published or written: the file (a webhook body, a poll page) is wrapped as a raw
event of a placeholder connection and mapped exactly as the normalizer would map it. Each line
is `{"kind": K, K: {...}}` with K one of fill, cash_movement, account, rejection, skipped, in
that order; canonical records appear as the canonical topic would carry them.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, TextIO

import orjson

from services.normalizer.mappers import Mapping, mapper_for
from services.normalizer.mappers.ibkr import parse_flex
from services.shared.envelope import ConnectionRef, ConnectionType, EventSource, RawEvent
from services.shared.errors import InvalidEvent

_PROGRAM = "poscal-sync normalize"
_PLACEHOLDER = uuid.UUID(int=0)
_CONTENT_TYPES = {"ibkr": "application/xml"}
_SOURCES: dict[str, EventSource] = {"mt5": "webhook"}


@dataclass(frozen=True)
class PayloadOwner:
    """The account a payload names, read without judging the rest of it."""

    account_number: str
    server: str | None = None
    connection_type: ConnectionType = "demo"


def payload_owner(broker: str, body: bytes) -> PayloadOwner | None:
    """Best effort: None when the payload names no account (the mapper will say what is wrong)."""
    try:
        if broker == "ibkr":
            statement = parse_flex(body).find("./FlexStatements/FlexStatement")
            account = None if statement is None else statement.get("accountId")
            return PayloadOwner(account) if account else None
        document = json.loads(body, parse_float=Decimal)
    except (InvalidEvent, ValueError, RecursionError):
        return None
    if not isinstance(document, dict):
        return None
    if broker == "mt5" and isinstance(account := document.get("account"), dict):
        login, server = account.get("login"), account.get("server")
        if isinstance(login, int) and not isinstance(login, bool):
            return PayloadOwner(str(login), server if isinstance(server, str) else None)
    if broker == "oanda" and isinstance(account_id := document.get("accountID"), str):
        live = document.get("environment") == "live"
        return PayloadOwner(account_id, connection_type="live" if live else "demo")
    return None


def records(mapping: Mapping) -> Iterator[dict[str, Any]]:
    """Every line to print: fills, cash movements, the account snapshot, rejections, skips."""
    batch = mapping.batch
    for fill in batch.fills:
        yield {"kind": "fill", "fill": fill.model_dump(mode="json")}
    for movement in batch.cash_movements:
        yield {"kind": "cash_movement", "cash_movement": movement.model_dump(mode="json")}
    if batch.account is not None:
        yield {"kind": "account", "account": batch.account.model_dump(mode="json")}
    for rejection in mapping.rejected:
        yield {"kind": "rejection", "rejection": dataclasses.asdict(rejection)}
    for skipped in mapping.skipped:
        yield {"kind": "skipped", "skipped": dataclasses.asdict(skipped)}


def run_normalize(
    broker: str,
    path: Path,
    out: TextIO,
    account_number: str | None,
    *,
    err: TextIO | None = None,
    now: datetime | None = None,
) -> int:
    err = err or sys.stderr
    try:
        body = path.read_bytes()
    except OSError as exc:
        print(f"{_PROGRAM}: cannot read {path}: {exc.strerror or exc}", file=err)
        return 1
    owner = payload_owner(broker, body)
    if account_number is None and owner is not None:
        print(
            f"{_PROGRAM}: account number {owner.account_number} taken from the payload "
            "(pass --account-number to check the payload against an account)",
            file=err,
        )
    connection = ConnectionRef(
        connection_id=_PLACEHOLDER,
        user_id=_PLACEHOLDER,
        account_id=_PLACEHOLDER,
        broker=broker,
        connection_type=owner.connection_type if owner else "demo",
        account_number=account_number or (owner.account_number if owner else ""),
        server=owner.server if owner else None,
    )
    event = RawEvent.wrap(
        source=_SOURCES.get(broker, "poller"),
        connection=connection,
        received_at=now or datetime.now(UTC),
        delivery_id=f"file:{path.name}",
        body=body,
        content_type=_CONTENT_TYPES.get(broker, "application/json"),
    )
    try:
        mapping = mapper_for(broker)(event)
    except InvalidEvent as exc:
        print(f"{_PROGRAM}: {path} cannot be mapped: {exc.code}: {exc.detail}", file=err)
        return 1
    for record in records(mapping):
        out.write(orjson.dumps(record, default=str).decode() + "\n")
    batch = mapping.batch
    print(
        f"{_PROGRAM}: {len(batch.fills)} fill(s), {len(batch.cash_movements)} cash "
        f"movement(s), {'an' if batch.account else 'no'} account snapshot, "
        f"{len(mapping.rejected)} rejected, {len(mapping.skipped)} skipped",
        file=err,
    )
    return 0
