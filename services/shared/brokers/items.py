"""Mapping one payload item, the one way every mapper does: whatever goes wrong with an item
(refused by its model, by the mapper, or any exception its content provokes) is that item's
rejection, with its reason, and the rest of the payload is still mapped."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from decimal import localcontext
from typing import Any, TypeVar

from pydantic import ValidationError

from services.shared.brokers import Rejection
from services.shared.brokers.payloads import describe_validation_error
from services.shared.canonical import EXACT, CashMovement, Fill
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
