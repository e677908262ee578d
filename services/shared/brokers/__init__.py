"""Broker plug-ins: each broker is one module or package here exporting `BROKER`, the one typed
object the services find it by. Adding a broker means adding one, and touches no shared code."""

from __future__ import annotations

import importlib
import pkgutil
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import orjson

from services.shared.brokers.discovery import AccountDiscovery
from services.shared.brokers.payloads import json_object_or_none
from services.shared.brokers.polling import AdapterFactory
from services.shared.brokers.provisioning import TerminalServiceFactory
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
class MappedEvent:
    """What one raw event became: its canonical batch, and the items refused or left out."""

    batch: CanonicalBatch
    rejected: tuple[Rejection, ...] = field(default=())
    skipped: tuple[Skipped, ...] = field(default=())


@dataclass(frozen=True)
class PayloadOwner:
    """The account a payload names, read without judging the rest of it."""

    account_number: str
    server: str | None = None
    connection_type: ConnectionType = "demo"


class InvalidCredential(ValueError):
    """Credentials refused before anything is stored; the message never repeats them."""


@dataclass(frozen=True)
class CredentialField:
    """One thing a broker's credentials are made of, as a form asks for it."""

    name: str
    label: str
    secret: bool = True


@dataclass(frozen=True)
class Credentials:
    """What a broker signs in with, and how the vault keeps it: a JSON object of its fields as
    non-empty strings, or (`token`) the one field's text as it is."""

    fields: tuple[CredentialField, ...]
    token: bool = False

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.fields)

    def seal_form(self, broker: str, text: str) -> bytes:
        """The bytes to seal for what was entered (a token, or a JSON object of the fields);
        InvalidCredential saying what is wrong, never quoting it."""
        if not text.strip():
            raise InvalidCredential("no credential was given: it was empty")
        if self.token:
            return text.strip().encode()
        shape = "{" + ", ".join(f'"{name}": ...' for name in self.names) + "}"
        try:
            document = orjson.loads(text)
        except orjson.JSONDecodeError:
            document = None
        if not isinstance(document, dict):
            raise InvalidCredential(f"{broker} credentials must be a JSON object: {shape}")
        unknown = sorted(set(document) - set(self.names))
        if unknown:
            raise InvalidCredential(
                f"{broker} credentials have unknown field(s): {', '.join(unknown)}"
            )
        for name in self.names:
            value = document.get(name)
            if not isinstance(value, str) or not value.strip():
                raise InvalidCredential(f"{broker} credentials need {name!r} as a non-empty string")
        return orjson.dumps({name: document[name] for name in self.names})


def _no_owner(_body: bytes) -> PayloadOwner | None:
    return None


@dataclass(frozen=True)
class Broker:
    """One broker, as every service sees it.

    Its mapper (`map_event`) is pure (no I/O, no clock): one raw event to what it means. Its poll
    adapter (`poll`), if it has one, does HTTP only (see `polling.py`): the poller publishes
    each page and saves cursors."""

    name: str
    title: str
    # The mapper of its usual payload, which names no kind.
    map_event: Callable[[RawEvent], MappedEvent]
    credentials: Credentials
    # What its payloads are and how they usually arrive (for tools that read one from a file).
    content_type: str = "application/json"
    source: EventSource = "poller"
    payload_owner: Callable[[bytes], PayloadOwner | None] = _no_owner
    # The poller's way in; None for a broker that only pushes webhooks.
    poll: AdapterFactory | None = None
    # A broker polled through a cloud terminal made for each connection (`connections
    # provision`): only a connection whose terminal is ready is put on the schedule.
    terminals: TerminalServiceFactory | None = None
    connection_types: tuple[ConnectionType, ...] = ("demo", "live")
    # Whether an account number alone is ambiguous: the trading server is part of its keys.
    needs_server: bool = False
    # The mappers of its other payloads (other ways its data arrives), each naming its kind in a
    # top-level "kind"; a broker with none maps every payload with `map_event`.
    payload_kinds: Mapping[str, Callable[[RawEvent], MappedEvent]] = field(default_factory=dict)
    # The connection wizard's sign-in check: the accounts entered credentials reach. None for a
    # broker whose sign-in is checked another way (a cloud terminal's provisioning) or not at
    # all (webhooks only).
    discover: AccountDiscovery | None = None

    @property
    def polled(self) -> bool:
        return self.poll is not None

    def map(self, event: RawEvent) -> MappedEvent:
        """`event` mapped by the mapper of its payload's kind; a kind it has no mapper for is
        refused whole, with the kind named."""
        if not self.payload_kinds or b'"kind"' not in event.body:
            return self.map_event(event)  # the usual payload, without reading the body twice
        document = json_object_or_none(event.body)
        kind = document.get("kind") if document is not None else None
        if kind is None:
            return self.map_event(event)
        mapper = self.payload_kinds.get(kind) if isinstance(kind, str) else None
        if mapper is None:
            raise InvalidEvent("invalid_payload", f"no {self.title} payload of kind {kind!r}")
        return mapper(event)

    @property
    def scheduled_when_created(self) -> bool:
        """Polled from creation on; a broker with cloud terminals only once one is ready."""
        return self.polled and self.terminals is None


class UnknownBroker(LookupError):
    def __init__(self, name: str) -> None:
        super().__init__(f"no broker {name!r}")
        self.name = name


_NAME = re.compile(r"^[a-z][a-z0-9_]{1,31}$")


@cache
def broker(name: str) -> Broker:
    """The broker named `name` (its module's `BROKER`); UnknownBroker if there is none."""
    if not _NAME.match(name):
        raise UnknownBroker(name)
    module_name = f"{__name__}.{name}"
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:
            raise  # the broker exists but something it imports does not: a broken install
        raise UnknownBroker(name) from None
    found = getattr(module, "BROKER", None)
    if not isinstance(found, Broker):
        raise UnknownBroker(name)
    return found


@cache
def broker_names() -> tuple[str, ...]:
    """Every broker there is, so commands and forms offer exactly those."""
    names = []
    for info in pkgutil.iter_modules(__path__):
        try:
            broker(info.name)
        except UnknownBroker:
            continue  # a shared module of the plug-ins, not a broker
        names.append(info.name)
    return tuple(sorted(names))


def mapper_for(name: str) -> Callable[[RawEvent], MappedEvent]:
    """A broker's mapper; InvalidEvent (`unknown_broker`) for an event of no known broker."""
    try:
        return broker(name).map
    except UnknownBroker:
        raise InvalidEvent("unknown_broker", f"no mapper for broker {name!r}") from None


def adapter_for(name: str) -> AdapterFactory:
    """A broker's poll adapter factory; UnknownBroker if it has none."""
    poll = broker(name).poll
    if poll is None:
        raise UnknownBroker(name)
    return poll
