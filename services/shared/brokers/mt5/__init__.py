"""MetaTrader 5: every way an account's deals arrive maps to the same keys (server, login and the
broker's tickets), so one account synced through any mix of them has one set of journal rows."""

from __future__ import annotations

from collections.abc import Callable

from services.shared.brokers import Broker, CredentialField, Credentials, MappedEvent
from services.shared.brokers.mt5 import report, webhook
from services.shared.brokers.payloads import json_object_or_none
from services.shared.envelope import RawEvent
from services.shared.errors import InvalidEvent

# A payload says what it is by its "kind"; a webhook body (the Expert Advisor's, or a bridge's)
# has none.
_MAPPERS: dict[str | None, Callable[[RawEvent], MappedEvent]] = {
    None: webhook.map_event,
    report.KIND: report.map_event,  # a terminal's history report (`poscal-sync import`)
}


def map_event(event: RawEvent) -> MappedEvent:
    if b'"kind"' not in event.body:
        return webhook.map_event(event)  # the common case, without reading the body twice
    document = json_object_or_none(event.body)
    kind = document.get("kind") if document is not None else None
    mapper = _MAPPERS.get(kind) if isinstance(kind, str | None) else None
    if mapper is None:
        raise InvalidEvent("invalid_payload", f"no MT5 payload of kind {kind!r}")
    return mapper(event)


BROKER = Broker(
    name="mt5",
    title="MetaTrader 5",
    map_event=map_event,
    # The account's sign-in: what a cloud terminal logs in with (the investor password suffices).
    credentials=Credentials(
        (
            CredentialField("login", "Login", secret=False),
            CredentialField("password", "Investor password"),
            CredentialField("server", "Server", secret=False),
        )
    ),
    source="webhook",
    payload_owner=webhook.payload_owner,
    needs_server=True,  # deal keys embed server and login: a blank one would match no webhook
)
