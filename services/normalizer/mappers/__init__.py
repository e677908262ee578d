"""Per-broker mappers, found by name: adding a broker means adding `mappers/<broker>.py`.

Each mapper module defines `map_event(event: RawEvent) -> Mapping`, pure: no I/O, no clock.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from types import ModuleType
from typing import Any

from services.shared.canonical import CanonicalBatch
from services.shared.envelope import ConnectionType, EventSource, RawEvent
from services.shared.errors import InvalidEvent


@dataclass(frozen=True)
class Rejection:
    """One item of a payload that could not be mapped; the rest of the payload still is.

    `index` is the item's place in the payload's list; a part that is no list item (the account
    summary) has none and is named by `location`.
    """

    code: str
    detail: str
    index: int | None
    item: Any
    location: str | None = None


@dataclass(frozen=True)
class Skipped:
    """One item the mapper leaves out on purpose (an order, a heartbeat, a summary row)."""

    index: int
    type: str
    id: str | None
    reason: str = ""


@dataclass(frozen=True)
class Mapping:
    batch: CanonicalBatch
    rejected: tuple[Rejection, ...] = field(default=())
    skipped: tuple[Skipped, ...] = field(default=())


Mapper = Callable[[RawEvent], Mapping]
_BROKER_NAME = re.compile(r"^[a-z][a-z0-9_]{1,31}$")


def available_brokers() -> tuple[str, ...]:
    """Every broker with a mapper module here, so the commands offer exactly those."""
    return tuple(
        sorted(
            info.name
            for info in pkgutil.iter_modules(__path__)
            if _BROKER_NAME.match(info.name) and not info.ispkg
        )
    )


@dataclass(frozen=True)
class PayloadOwner:
    """The account a payload names, read without judging the rest of it."""

    account_number: str
    server: str | None = None
    connection_type: ConnectionType = "demo"


@dataclass(frozen=True)
class BrokerPayloads:
    """What a mapper module says about its payloads, for tools that read one from a file:
    their content type, how they usually arrive, and (best effort) whose account they are."""

    content_type: str
    source: EventSource
    owner: Callable[[bytes], PayloadOwner | None]


def _mapper_module(broker: str) -> ModuleType:
    if not _BROKER_NAME.match(broker):
        raise InvalidEvent("unknown_broker", f"no mapper for broker {broker!r}")
    name = f"{__name__}.{broker}"
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name != name:
            raise  # the mapper exists but something it imports does not: a broken install
        raise InvalidEvent("unknown_broker", f"no mapper for broker {broker!r}") from None


@cache
def mapper_for(broker: str) -> Mapper:
    mapper: Mapper = _mapper_module(broker).map_event
    return mapper


def payloads_of(broker: str) -> BrokerPayloads:
    """A mapper module's CONTENT_TYPE (default JSON), SOURCE (default the poller) and
    `payload_owner` (default: none can be told)."""
    module = _mapper_module(broker)
    return BrokerPayloads(
        content_type=getattr(module, "CONTENT_TYPE", "application/json"),
        source=getattr(module, "SOURCE", "poller"),
        owner=getattr(module, "payload_owner", lambda _body: None),
    )
