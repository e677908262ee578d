"""The canonical topic's contract: broker-neutral fills, cash movements and account snapshots.

Amounts are Decimal (JSON strings on the wire), times are UTC; every record carries a stable
idempotency key derived from the broker's own atomic id, so replays can never double-count.
"""

from __future__ import annotations

import uuid
from decimal import Decimal
from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, field_validator

from services.shared.envelope import ConnectionRef, EventSource

Side = Literal["buy", "sell"]
FillEntry = Literal["in", "out", "inout", "out_by"]


class _Canonical(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Fill(_Canonical):
    """One execution against a position (an MT5 deal, an OANDA fill leg)."""

    fill_key: str
    position_key: str
    symbol: str
    side: Side
    entry: FillEntry
    volume: Decimal
    price: Decimal
    profit: Decimal = Decimal(0)
    commission: Decimal = Decimal(0)
    swap: Decimal = Decimal(0)
    fee: Decimal = Decimal(0)
    executed_at: AwareDatetime
    broker_time: str
    broker_ref: str
    order_ref: str | None = None
    comment: str | None = None
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
    """Money in or out of the account that is not a trade: deposits, credit, fees, interest."""

    movement_key: str
    kind: str
    amount: Decimal
    executed_at: AwareDatetime
    broker_time: str
    broker_ref: str
    comment: str | None = None


class AccountSnapshot(_Canonical):
    """The account's balance as the broker reported it at `as_of`.

    `deals_through` is the newest deal the report carried: a report whose deals are older than
    ones already recorded is a stale copy re-sent late, and must not roll the balance back.
    """

    currency: str | None = None
    balance: Decimal
    equity: Decimal | None = None
    as_of: AwareDatetime
    deals_through: AwareDatetime | None = None


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
