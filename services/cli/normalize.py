"""`poscal-sync normalize`: one broker payload file through its mapper, printed as JSON lines."""

from __future__ import annotations

import dataclasses
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import orjson

from services.shared.brokers import MappedEvent, UnknownBroker, broker
from services.shared.dead_letters import json_safe
from services.shared.envelope import ConnectionRef, RawEvent
from services.shared.errors import InvalidEvent

_PROGRAM = "poscal-sync normalize"
_PLACEHOLDER = uuid.UUID(int=0)


def records(mapping: MappedEvent) -> Iterator[dict[str, Any]]:
    """Every line to print: fills, cash movements, the account snapshot, rejections, skips."""
    batch = mapping.batch
    for fill in batch.fills:
        yield {"kind": "fill", "fill": fill.model_dump(mode="json")}
    for movement in batch.cash_movements:
        yield {"kind": "cash_movement", "cash_movement": movement.model_dump(mode="json")}
    if batch.account is not None:
        yield {"kind": "account", "account": batch.account.model_dump(mode="json")}
    for rejection in mapping.rejected:
        described = dataclasses.asdict(rejection) | {"item": json_safe(rejection.item)}
        yield {"kind": "rejection", "rejection": described}
    for skipped in mapping.skipped:
        yield {"kind": "skipped", "skipped": dataclasses.asdict(skipped)}


def run_normalize(
    broker_name: str,
    path: Path,
    out: TextIO,
    account_number: str | None,
    *,
    err: TextIO | None = None,
    now: datetime | None = None,
) -> int:
    """Map the file and print what it became; the exit status: 1 if the file cannot be read, the
    broker is unknown or the payload cannot be mapped.

    Nothing is published or written: the file (a webhook body, a poll page) is wrapped as a raw
    event of a placeholder connection and mapped by the broker's mapper, as the normalizer maps
    it. Each line is `{"kind": K, K: {...}}` with K one of fill, cash_movement, account,
    rejection, skipped, in that order; canonical records appear as the canonical topic would
    carry them."""
    err = err or sys.stderr
    try:
        body = path.read_bytes()
    except OSError as exc:
        print(f"{_PROGRAM}: cannot read {path}: {exc.strerror or exc}", file=err)
        return 1
    try:
        plugin = broker(broker_name)
    except UnknownBroker:
        print(f"{_PROGRAM}: unknown_broker: no mapper for broker {broker_name!r}", file=err)
        return 1
    owner = plugin.payload_owner(body)
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
        broker=broker_name,
        connection_type=owner.connection_type if owner else "demo",
        account_number=account_number or (owner.account_number if owner else ""),
        server=owner.server if owner else None,
    )
    event = RawEvent.wrap(
        source=plugin.source,
        connection=connection,
        received_at=now or datetime.now(UTC),
        delivery_id=f"file:{path.name}",
        body=body,
        content_type=plugin.content_type,
    )
    try:
        mapping = plugin.map(event)
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
