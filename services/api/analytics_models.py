"""`GET /v1/analytics` on the wire: the filters it takes (`AnalyticsQuery`) and the figures it
answers (`Analytics`), each figure that could be read two ways with its definition beside it.

Money is a decimal string (exact, in the account's currency); ratios and returns are numbers."""

from __future__ import annotations

import re
import uuid
import zoneinfo
from datetime import date
from decimal import Decimal
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, PlainSerializer

MAX_ACCOUNTS = 50
_UUID_LIST = (
    r"^[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}"
    r"(,[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12})*$"
)
_ZONE_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_+\-]*(/[A-Za-z0-9_+\-]+)*$")


def _known_zone(name: str) -> str:
    """An IANA zone this server knows (`Europe/Berlin`, `UTC`), else a validation error."""
    if not _ZONE_NAME.match(name):
        raise ValueError("not an IANA time zone name")
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ValueError("not an IANA time zone this server knows") from None
    return name


# Exact, and always written out in full (never `1E+2`).
Money = Annotated[Decimal, PlainSerializer(lambda d: format(d, "f"), return_type=str)]
TimeZoneName = Annotated[str, AfterValidator(_known_zone)]
ConnectionType = Literal["live", "demo"]


class AnalyticsQuery(BaseModel):
    model_config = ConfigDict(extra="ignore", title="AnalyticsQuery")

    accounts: str | None = Field(
        None,
        max_length=MAX_ACCOUNTS * 37,
        pattern=_UUID_LIST,
        description=(
            "Trading account ids, comma-separated (at most 50): only these accounts."
            " Absent: every account of the connection type."
        ),
    )
    broker: str | None = Field(
        None,
        pattern=r"^[a-z0-9_]{1,32}$",
        description="Only accounts synced from this broker (`mt5`, `oanda`, `ibkr`).",
    )
    from_date: date | None = Field(
        None, description="The first day included, in `time_zone` (inclusive)."
    )
    to_date: date | None = Field(
        None, description="The last day included, in `time_zone` (inclusive)."
    )
    connection_type: ConnectionType = Field(
        "live",
        description=(
            "Live or demo accounts, never both: demo figures are left out unless asked for,"
            " and are then all there is (`excluded` says how many accounts of the other"
            " type were left out)."
        ),
    )
    time_zone: TimeZoneName = Field(
        "UTC",
        max_length=64,
        description=(
            "The user's IANA time zone (`Europe/Berlin`): the day and week a trade, a return"
            " or a balance belongs to are its in this zone."
        ),
    )


class AppliedFilters(BaseModel):
    """The filters as applied: the accounts are those the figures are made of."""

    model_config = ConfigDict(extra="forbid", title="AppliedFilters")

    accounts: list[uuid.UUID]
    broker: str | None
    from_date: date | None
    to_date: date | None
    connection_type: ConnectionType
    time_zone: str


class Excluded(BaseModel):
    """What the filters left out that a user could expect to be in (never mixed in silently)."""

    model_config = ConfigDict(extra="forbid", title="Excluded")

    other_connection_type_accounts: int = Field(
        description=(
            "The user's accounts of the other connection type (demo when live was asked, and back)."
        )
    )


class Streak(BaseModel):
    model_config = ConfigDict(extra="forbid", title="Streak")

    kind: Literal["win", "loss"] | None = Field(
        description="The kind of the streak; null when there is no win or loss yet."
    )
    trades: int


class Streaks(BaseModel):
    model_config = ConfigDict(extra="forbid", title="Streaks")

    longest_win: int
    longest_loss: int
    current: Streak = Field(
        description="The streak the latest closed trades make, up to the last one (by close time)."
    )


class Headline(BaseModel):
    """The headline figures of a set of closed trades (see `definitions`)."""

    model_config = ConfigDict(extra="forbid", title="Headline")

    trades: int
    wins: int
    losses: int
    breakevens: int
    win_rate: float | None = Field(
        description="wins / (wins + losses); null without a win or a loss."
    )
    gross_profit: Money
    gross_loss: Money = Field(description="The sum of the losing trades' P&L (zero or negative).")
    net_pnl: Money
    profit_factor: float | None = Field(
        description="gross_profit / |gross_loss|; null when there are no losses."
    )
    expectancy: Money | None = Field(description="net_pnl / trades; null without trades.")
    average_win: Money | None
    average_loss: Money | None = Field(description="Negative, like the losses it averages.")
    largest_win: Money | None
    largest_loss: Money | None = Field(description="The most negative loss.")
    streaks: Streaks


class DailyReturn(BaseModel):
    """One day's time-weighted return: (end_balance - start_balance - net_flows) / start_balance."""

    model_config = ConfigDict(extra="forbid", title="DailyReturn")

    date: date
    start_balance: Money
    end_balance: Money
    net_flows: Money = Field(
        description="Deposits less withdrawals that day (transfers in and out of the accounts)."
    )
    pnl: Money = Field(
        description="The realized P&L of the trades closed that day, with charges booked that day."
    )
    value: float | None = Field(
        description="Null when start_balance is not positive (nothing to return on)."
    )


class CurvePoint(BaseModel):
    """The accounts' balance at the end of a day, and the drawdown from the peak before it."""

    model_config = ConfigDict(extra="forbid", title="CurvePoint")

    date: date
    balance: Money
    equity: Money | None = Field(
        description=(
            "The equity the broker reported for that day, where every account's is known (today's "
            "latest report); null elsewhere."
        )
    )
    growth: float = Field(
        description="Growth of 1 by the compounded daily returns up to that day (1.0 before any)."
    )
    drawdown: float = Field(
        description=(
            "growth / its running peak - 1: zero or negative, as max_drawdown.percent measures it."
        )
    )


class MaxDrawdown(BaseModel):
    model_config = ConfigDict(extra="forbid", title="MaxDrawdown")

    percent: float = Field(
        description=(
            "The deepest fall of the time-weighted curve (compounded daily returns) from its"
            " running peak, as a negative fraction (-0.25 is 25 % below the peak); zero without a"
            " fall."
        )
    )
    amount: Money = Field(
        description=(
            "The deepest fall of cumulative P&L (the balance less the net flows since the first"
            " day) from its running peak, in money (zero or negative): deposits and withdrawals"
            " are no fall."
        )
    )
    peak_date: date | None = Field(
        description=(
            "The percent drawdown's peak (the last day at the running peak before the trough) and "
            "trough; null without a fall."
        )
    )
    trough_date: date | None
    recovery_date: date | None = Field(
        description="The first day back at the peak's level; null while not recovered."
    )
    recovery_days: int | None = Field(
        description="Calendar days from the peak to recovery_date; null while not recovered."
    )


class Sharpe(BaseModel):
    model_config = ConfigDict(extra="forbid", title="Sharpe")

    value: float | None = Field(
        description=(
            "mean(r - rf/N) / std(r - rf/N, ddof 1) * sqrt(N) over the daily returns; null with"
            " fewer than two returns or no variation."
        )
    )
    periods_per_year: int
    risk_free_rate: float = Field(
        description="Annual risk-free rate, as a fraction (0 unless configured)."
    )
    observations: int = Field(description="How many daily returns it was computed from.")


class DurationBucket(BaseModel):
    model_config = ConfigDict(extra="forbid", title="DurationBucket")

    label: str
    min_seconds: int = Field(
        description=(
            "From this many seconds (inclusive) up to max_seconds (exclusive; null: no upper end)."
        )
    )
    max_seconds: int | None
    trades: int


class Durations(BaseModel):
    model_config = ConfigDict(extra="forbid", title="Durations")

    buckets: list[DurationBucket]
    median_seconds: float | None = Field(
        description=(
            "The median of open-to-close seconds (the mean of the middle two for an even count)."
        )
    )


class CalendarDay(BaseModel):
    model_config = ConfigDict(extra="forbid", title="CalendarDay")

    date: date
    pnl: Money
    trades: int


class CalendarWeek(BaseModel):
    model_config = ConfigDict(extra="forbid", title="CalendarWeek")

    week_start: date = Field(description="The Monday the ISO week starts on, in the time zone.")
    pnl: Money
    trades: int


class Calendar(BaseModel):
    """Closed trades' P&L by the day and week they closed in the user's time zone: days and
    weeks with trades only."""

    model_config = ConfigDict(extra="forbid", title="Calendar")

    daily: list[CalendarDay]
    weekly: list[CalendarWeek]


class BrokerBreakdown(BaseModel):
    model_config = ConfigDict(extra="forbid", title="BrokerBreakdown")

    broker: str
    accounts: int
    headline: Headline


class AccountBreakdown(BaseModel):
    model_config = ConfigDict(extra="forbid", title="AccountBreakdown")

    account_id: uuid.UUID
    name: str
    broker: str | None
    currency: str | None
    headline: Headline


class Definitions(BaseModel):
    """What each figure is, where it could be read two ways."""

    model_config = ConfigDict(extra="forbid", title="Definitions")

    trade: str = (
        "A closed journal row (a position), ordered by its close time; its P&L is"
        " profit + commission + swap + fees."
    )
    win_rate: str = (
        "Wins / (wins + losses): a win has P&L > 0, a loss < 0; a breakeven (exactly 0)"
        " counts as neither."
    )
    profit_factor: str = "Gross profit / |gross loss|; null when there are no losses."
    expectancy: str = "Net P&L / closed trades (breakevens included)."
    streaks: str = (
        "Consecutive wins or losses by close time; a breakeven neither extends nor breaks a streak."
    )
    daily_return: str = (
        "Time-weighted, net of deposits and withdrawals: r = (E_end - E_start - net flows)"
        " / E_start, E the accounts' balance at the end of the day in `time_zone`, rebuilt"
        " from cash movements and realized P&L. One return per weekday (Monday to Friday)"
        " from the first day with a balance to the last day with activity; what happens on a"
        " weekend counts in the Monday after it; a day starting at a balance of zero or less"
        " has no return (null) and counts in neither Sharpe nor drawdown."
    )
    drawdown: str = (
        "Percent: the deepest fall from the running peak of the curve compounded from the"
        " daily returns (flows are no fall); amount: the deepest fall of cumulative P&L;"
        " recovery: calendar days from the peak to the first day back at its level."
    )
    sharpe: str = (
        "mean / std (ddof 1) of daily returns less the daily risk-free rate, times sqrt(N)"
        " with N = periods_per_year (252: FX/CFD weekday returns)."
    )
    duration: str = "Close time less open time of each closed trade."
    calendar: str = "Closed trades by the day (and ISO week, from Monday) of their close time."


class Analytics(BaseModel):
    model_config = ConfigDict(extra="forbid", title="Analytics")

    filters: AppliedFilters
    excluded: Excluded
    currencies: list[str] = Field(
        description=(
            "The accounts' currencies: amounts of accounts in different currencies are summed as"
            " they are, so a list of more than one says the totals mix currencies."
        )
    )
    headline: Headline
    daily_returns: list[DailyReturn]
    curve: list[CurvePoint]
    max_drawdown: MaxDrawdown
    sharpe: Sharpe
    durations: Durations
    calendar: Calendar
    by_broker: list[BrokerBreakdown]
    by_account: list[AccountBreakdown]
    definitions: Definitions = Field(default_factory=Definitions)
