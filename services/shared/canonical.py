"""The canonical topic's contract: broker-neutral fills, cash movements and account snapshots."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from decimal import Context, Decimal, DivisionByZero, InvalidOperation, Overflow
from typing import Annotated, Literal

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field, field_validator

from services.shared.envelope import ConnectionRef, EventSource

Side = Literal["buy", "sell"]
FillEntry = Literal["in", "out", "inout", "out_by"]

# Every value is bounded here to what the database holds (migration 0008 states the same bounds
# as CHECK constraints), so a value outside is refused where it enters, with its reason, never
# silently altered further on (an exponent too large for a column, text Postgres cannot store):
# numbers finite, below 10^15 in magnitude, at most 18 decimal places; text valid Unicode (no lone
# surrogates) without NUL, at most a stated length; times aware, from 1970 up to (not including)
# 2200.
AMOUNT_MAGNITUDE = Decimal(10) ** 15
AMOUNT_PLACES = 18
# Arithmetic on bounded amounts (at most 33 digits): sums and products stay exact within 80
# digits, where Python's default 28-digit context would silently round them.
EXACT = Context(prec=80, traps=[InvalidOperation, DivisionByZero, Overflow])
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(2200, 1, 1, tzinfo=UTC)  # exclusive


def decimal_places(value: Decimal) -> int:
    """The decimal places `value` really has (trailing zeros do not count); exact, no context."""
    if value.is_zero():
        return 0
    _, digits, exponent = value.as_tuple()
    assert isinstance(exponent, int)  # finite
    trailing = 0
    for digit in reversed(digits):
        if digit != 0 or trailing >= -exponent:
            break
        trailing += 1
    return max(0, -exponent - trailing)


def check_amount(value: Decimal) -> Decimal:
    """A number the journal can hold exactly, or ValueError saying why not."""
    if not value:
        return value  # zero (NaN is truthy): most fees, swaps and commissions; nothing to count
    if not value.is_finite():
        raise ValueError("must be a finite number")
    if not -AMOUNT_MAGNITUDE < value < AMOUNT_MAGNITUDE:  # comparisons are exact, no context
        raise ValueError("must be smaller than 10^15 in magnitude")
    # Written with at most that many places (nearly always): no need to count trailing zeros.
    exponent = value.as_tuple().exponent
    assert isinstance(exponent, int)  # finite
    if exponent < -AMOUNT_PLACES and decimal_places(value) > AMOUNT_PLACES:
        raise ValueError(f"must have at most {AMOUNT_PLACES} decimal places")
    return value


def check_text(value: str) -> str:
    """Text Postgres stores as given: valid Unicode, no NUL."""
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    if value.isascii():
        return value  # no surrogate can be ASCII; isascii reads a flag, encode copies the text
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode (it holds a lone surrogate)") from None
    return value


def check_time(value: datetime) -> datetime:
    if not EARLIEST <= value < LATEST:
        raise ValueError("must be between 1970 and 2200")
    return value


Amount = Annotated[Decimal, AfterValidator(check_amount)]
Instant = Annotated[AwareDatetime, AfterValidator(check_time)]
# Keys are built from broker ids; symbols and kinds are short codes; refs are broker ids.
Key = Annotated[str, Field(min_length=1, max_length=256), AfterValidator(check_text)]
Code = Annotated[str, Field(min_length=1, max_length=64), AfterValidator(check_text)]
Ref = Annotated[str, Field(max_length=128), AfterValidator(check_text)]
Comment = Annotated[str, Field(max_length=1024), AfterValidator(check_text)]


class _Canonical(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Fill(_Canonical):
    """One execution against a position (an MT5 deal, an OANDA fill leg)."""

    fill_key: Key
    position_key: Key
    symbol: Code
    side: Side
    entry: FillEntry
    volume: Amount
    price: Amount
    profit: Amount = Decimal(0)
    commission: Amount = Decimal(0)
    swap: Amount = Decimal(0)
    fee: Amount = Decimal(0)
    executed_at: Instant
    broker_time: Ref
    broker_ref: Ref
    order_ref: Ref | None = None
    comment: Comment | None = None
    # The broker cancelled this execution (MT5 re-types the deal as BUY/SELL_CANCELED and books
    # its money separately): it is kept, keyed as before, and no longer counts in its position.
    cancelled: bool = False

    @field_validator("volume")
    @classmethod
    def _volume_is_positive(cls, value: Decimal) -> Decimal:
        if value <= 0:
            raise ValueError("volume must be positive")
        return value


class CashMovement(_Canonical):
    """Money in or out of the account that is not a trade: deposits, credit, fees, interest.

    With `position_key` it is a charge of that position (an OANDA trade's daily financing): it
    moves the balance like any cash movement, and it counts in that position's journal row.
    """

    movement_key: Key
    kind: Code
    amount: Amount
    executed_at: Instant
    broker_time: Ref
    broker_ref: Ref
    comment: Comment | None = None
    position_key: Key | None = None


class AccountSnapshot(_Canonical):
    """The account's balance as the broker reported it at `as_of`.

    `deals_through` is the newest deal the report carried: a report whose deals are older than
    ones already recorded is a stale copy re-sent late, and must not roll the balance back.
    """

    currency: Code | None = None
    balance: Amount
    equity: Amount | None = None
    as_of: Instant
    deals_through: Instant | None = None


# Amounts are Decimal (JSON strings on the wire), times are UTC; every record carries a stable
# idempotency key derived from the broker's own atomic id (`fill_key`, `movement_key`), so replays
# can never double-count. (A comment, not the docstring: that is the JSON Schema's description.)
class CanonicalBatch(_Canonical):
    """Everything one raw event became. One message, so one event is written atomically."""

    schema_version: Literal[1] = 1
    event_id: uuid.UUID
    source: EventSource
    connection: ConnectionRef
    received_at: AwareDatetime
    account: AccountSnapshot | None = None
    fills: tuple[Fill, ...] = ()
    cash_movements: tuple[CashMovement, ...] = ()
