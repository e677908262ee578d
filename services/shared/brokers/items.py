"""Mapping one payload item, the one way every mapper does: whatever goes wrong with an item is
that item's rejection, with its reason, and the rest of the payload is still mapped."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import localcontext
from typing import Any, TypeVar

from pydantic import ValidationError

from services.shared.brokers import MappedEvent, Rejection, Skipped
from services.shared.brokers.payloads import describe_validation_error
from services.shared.canonical import EXACT, AccountSnapshot, CanonicalBatch, CashMovement, Fill
from services.shared.envelope import RawEvent
from services.shared.errors import InvalidEvent

T = TypeVar("T")

# A record dated further after its receipt than any clock error explains is corrupt, not a trade.
MAX_AHEAD_OF_RECEIPT = timedelta(days=1)


def mapped_or_rejected(
    index: int | None,
    item: Any,
    map_item: Callable[[], T],
    *,
    invalid_code: str,
    location: str | None = None,
) -> T | Rejection:
    """`map_item()`, or the item's Rejection: `invalid_code` when its model refuses it, the
    mapper's own code for an InvalidEvent, `mapper_error` for any other exception (a mapper
    that cannot handle some content must cost only that item)."""
    try:
        with localcontext(EXACT):  # an item's arithmetic is exact, never rounded to 28 digits
            return map_item()
    except ValidationError as exc:
        return Rejection(invalid_code, describe_validation_error(exc), index, item, location)
    except InvalidEvent as exc:
        return Rejection(exc.code, exc.detail, index, item, location)
    except Exception as exc:
        detail = f"{type(exc).__name__}: {exc}"
        return Rejection("mapper_error", detail, index, item, location)


def check_plausible_time(record: Fill | CashMovement, received_at: datetime) -> None:
    """A record dated well after its event was received is refused (InvalidEvent)."""
    if record.executed_at > received_at + MAX_AHEAD_OF_RECEIPT:
        raise InvalidEvent(
            "implausible_time",
            f"executed at {record.executed_at.isoformat()}, more than a day after the event"
            f" was received ({received_at.isoformat()})",
        )


Record = Fill | CashMovement


@dataclass
class MappedItems:
    """A payload's items as they are mapped, one by one: records, rejections, skips; then the
    event they make (`event`). Every mapper collects them this one way."""

    fills: list[Fill] = field(default_factory=list)
    cash: list[CashMovement] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)

    def map(
        self,
        index: int,
        item: Any,
        map_item: Callable[[], Record | Sequence[Record] | Skipped],
        *,
        invalid_code: str,
    ) -> None:
        """Map one item (see `mapped_or_rejected`) and keep what it became."""
        outcome = mapped_or_rejected(index, item, map_item, invalid_code=invalid_code)
        if isinstance(outcome, Rejection | Skipped):
            self.keep(outcome)
        else:
            self.add(outcome)

    def keep(self, outcome: Rejection | Skipped) -> None:
        """An item refused, or left out on purpose."""
        if isinstance(outcome, Rejection):
            self.rejected.append(outcome)
        else:
            self.skipped.append(outcome)

    def add(self, records: Record | Sequence[Record]) -> None:
        for record in [records] if isinstance(records, Fill | CashMovement) else records:
            if isinstance(record, Fill):
                self.fills.append(record)
            else:
                self.cash.append(record)

    def account(
        self, summary: Any, snapshot: Callable[[], AccountSnapshot], *, invalid_code: str
    ) -> AccountSnapshot | None:
        """The account snapshot, an item too: one the journal cannot hold is rejected (the
        records still go on)."""
        outcome = mapped_or_rejected(
            None, summary, snapshot, invalid_code=invalid_code, location="account"
        )
        if isinstance(outcome, Rejection):
            self.rejected.append(outcome)
            return None
        return outcome

    def event(
        self,
        event: RawEvent,
        account: AccountSnapshot | None = None,
        fills: Sequence[Fill] | None = None,
    ) -> MappedEvent:
        """The event these items make (`fills`: instead of those collected, when the mapper
        settles them itself)."""
        batch = CanonicalBatch(
            event_id=event.event_id,
            source=event.source,
            connection=event.connection,
            received_at=event.received_at,
            account=account,
            fills=tuple(self.fills if fills is None else fills),
            cash_movements=tuple(self.cash),
        )
        return MappedEvent(batch=batch, rejected=tuple(self.rejected), skipped=tuple(self.skipped))
