"""The analytics' figures against hand-worked answers, the time zone's day edges, and
empyrical (a well-kept finance library) on the same daily series."""

from __future__ import annotations

import random
import uuid
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import empyrical
import numpy as np
import pytest

from services.shared.analytics.days import (
    ClosedTrade,
    Movement,
    day_bounds,
    local_day,
    summarize_days,
    trade_pnl,
)
from services.shared.analytics.metrics import (
    Anchor,
    curve,
    daily_returns,
    max_drawdown,
    sharpe,
)
from services.shared.analytics.report import Account, report
from services.shared.analytics.streaks import Streak, Streaks, runs_of

A = uuid.UUID("00000000-0000-0000-0000-00000000000a")
B = uuid.UUID("00000000-0000-0000-0000-00000000000b")


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def trade(trade_id: str, opened: str, closed: str, *parts: str) -> ClosedTrade:
    profit, commission, swap, fees = (Decimal(p) for p in (*parts, "0", "0", "0")[:4])
    return ClosedTrade(trade_id, at(closed), at(opened), trade_pnl(profit, commission, swap, fees))


# Won, lost, broke even, lost, won (by close time), in an order that is not the close order.
TRADES = [
    trade("t5", "2026-03-04T09:50:00", "2026-03-04T10:00:00", "40", "0", "0", "-1"),
    trade("t1", "2026-03-02T09:59:30", "2026-03-02T10:00:00", "100", "-2", "-1"),
    trade("t3", "2026-03-03T08:00:00", "2026-03-03T09:00:00", "0"),
    trade("t2", "2026-03-02T11:57:00", "2026-03-02T12:00:00", "-50", "-2"),
    trade("t4", "2026-03-01T15:00:00", "2026-03-03T15:00:00", "-30"),
]
MOVEMENTS = [
    (at("2026-02-27T08:00:00"), Movement("balance", Decimal("1000"))),
    (at("2026-03-03T16:00:00"), Movement("withdrawal", Decimal("-100"))),
    (at("2026-03-03T17:00:00"), Movement("credit", Decimal("500"))),  # the broker's, no balance
]
ACCOUNT = Account(A, "Main", "mt5", "USD")


def test_a_trades_pnl_is_profit_plus_commission_swap_and_fees() -> None:
    assert trade_pnl(Decimal("100"), Decimal("-2"), Decimal("-1"), Decimal("-0.5")) == Decimal(
        "96.5"
    )
    assert trade_pnl(Decimal("5"), None, None, None) == Decimal("5")


def test_headline_figures_equal_the_hand_worked_answer() -> None:
    days = summarize_days(A, "UTC", TRADES, MOVEMENTS)
    figures = report([ACCOUNT], days, {})

    h = figures.headline
    assert (h.trades, h.wins, h.losses, h.breakevens) == (5, 2, 2, 1)
    assert h.win_rate == 0.5  # the breakeven counts neither way
    assert (h.gross_profit, h.gross_loss, h.net_pnl) == (Decimal(136), Decimal(-82), Decimal(54))
    assert h.profit_factor == pytest.approx(136 / 82, abs=1e-15)
    assert h.expectancy == Decimal("10.8")
    assert (h.average_win, h.average_loss) == (Decimal(68), Decimal(-41))
    assert (h.largest_win, h.largest_loss) == (Decimal(97), Decimal(-52))
    # W L (B) L W: the breakeven neither breaks nor extends the losing streak.
    assert h.streaks == Streaks(longest_win=1, longest_loss=2, current=Streak("win", 1))


def test_profit_factor_is_null_without_losses_and_win_rate_without_decided_trades() -> None:
    winners = summarize_days(A, "UTC", [trade("w", "2026-03-02T09:00", "2026-03-02T10:00", "5")])
    evens = summarize_days(A, "UTC", [trade("e", "2026-03-02T09:00", "2026-03-02T10:00", "0")])

    assert report([ACCOUNT], winners, {}).headline.profit_factor is None
    flat = report([ACCOUNT], evens, {}).headline
    assert (flat.win_rate, flat.profit_factor, flat.expectancy) == (None, None, Decimal(0))


def test_durations_fall_in_their_buckets_and_the_median_is_the_middle_one() -> None:
    durations = report([ACCOUNT], summarize_days(A, "UTC", TRADES), {}).durations

    assert {b.label: b.trades for b in durations.buckets} == {
        "<1 min": 1,
        "1-5 min": 1,
        "5-15 min": 1,
        "15 min-1 h": 0,
        "1-4 h": 1,  # exactly one hour starts the next bucket
        "4 h-1 d": 0,
        "1-7 d": 1,
        ">7 d": 0,
    }
    assert durations.median_seconds == 600.0


def test_daily_returns_are_time_weighted_net_of_flows_with_the_hand_worked_drawdown() -> None:
    figures = report([ACCOUNT], summarize_days(A, "UTC", TRADES, MOVEMENTS), {})

    returns = {r.date: r for r in figures.daily_returns}
    assert list(returns) == [
        date(2026, 2, 27),
        date(2026, 3, 2),
        date(2026, 3, 3),
        date(2026, 3, 4),
    ]
    assert returns[date(2026, 2, 27)].value is None  # started from nothing
    assert returns[date(2026, 3, 2)].value == pytest.approx(45 / 1000, abs=1e-15)
    tuesday = returns[date(2026, 3, 3)]
    assert (tuesday.start_balance, tuesday.end_balance, tuesday.net_flows) == (
        Decimal(1045),
        Decimal(915),
        Decimal(-100),
    )
    assert tuesday.value == pytest.approx(-30 / 1045, abs=1e-15)  # the withdrawal is no loss
    assert returns[date(2026, 3, 4)].value == pytest.approx(39 / 915, abs=1e-15)
    drawdown = figures.max_drawdown
    assert drawdown.percent == pytest.approx(-30 / 1045, abs=1e-15)
    assert drawdown.amount == Decimal(-30)
    assert (drawdown.peak_date, drawdown.trough_date) == (date(2026, 3, 2), date(2026, 3, 3))
    assert (drawdown.recovery_date, drawdown.recovery_days) == (date(2026, 3, 4), 2)


def test_a_drawdown_not_recovered_has_no_recovery() -> None:
    losing = [
        trade("a", "2026-03-02T09:00", "2026-03-02T10:00", "50"),
        trade("b", "2026-03-03T09:00", "2026-03-03T10:00", "-80"),
    ]
    figures = report([ACCOUNT], summarize_days(A, "UTC", losing, MOVEMENTS[:1]), {})

    assert figures.max_drawdown.trough_date == date(2026, 3, 3)
    assert (figures.max_drawdown.recovery_date, figures.max_drawdown.recovery_days) == (None, None)


def test_the_balance_curve_ends_at_the_balance_the_broker_reported() -> None:
    anchor = Anchor(Decimal("2000"), date(2026, 3, 4))
    figures = report([ACCOUNT], summarize_days(A, "UTC", TRADES), {A: anchor})

    assert figures.curve[-1].balance == Decimal(2000)
    assert figures.daily_returns[0].start_balance == Decimal(2000) - Decimal(54)


def test_weekend_activity_counts_in_the_monday_after_it() -> None:
    weekend = [trade("s", "2026-03-07T09:00", "2026-03-07T10:00", "10")]  # a Saturday
    returns = report([ACCOUNT], summarize_days(A, "UTC", TRADES + weekend, MOVEMENTS), {})

    series = {r.date: r for r in returns.daily_returns}
    assert date(2026, 3, 7) not in series
    assert series[date(2026, 3, 9)].pnl == Decimal(10)
    assert returns.calendar.daily[-1].date == date(2026, 3, 7)


def test_a_trade_closing_at_23_30_utc_is_the_next_day_for_a_user_at_utc_plus_one() -> None:
    late = trade("late", "2026-03-02T20:00", "2026-03-02T23:30", "25")

    assert local_day(late.closed_at, "UTC") == date(2026, 3, 2)
    assert local_day(late.closed_at, "Europe/Berlin") == date(2026, 3, 3)
    berlin = report([ACCOUNT], summarize_days(A, "Europe/Berlin", [late]), {})
    utc = report([ACCOUNT], summarize_days(A, "UTC", [late]), {})
    assert [(d.date, d.pnl) for d in berlin.calendar.daily] == [(date(2026, 3, 3), Decimal(25))]
    assert [(d.date, d.pnl) for d in utc.calendar.daily] == [(date(2026, 3, 2), Decimal(25))]
    assert [w.week_start for w in berlin.calendar.weekly] == [date(2026, 3, 2)]


def test_a_sunday_2330_utc_close_is_monday_and_starts_a_new_week_east_of_utc() -> None:
    sunday_night = trade("n", "2026-03-08T20:00", "2026-03-08T23:30", "-5")

    berlin = report([ACCOUNT], summarize_days(A, "Europe/Berlin", [sunday_night]), {})
    utc = report([ACCOUNT], summarize_days(A, "UTC", [sunday_night]), {})
    assert berlin.calendar.weekly[0].week_start == date(2026, 3, 9)
    assert utc.calendar.weekly[0].week_start == date(2026, 3, 2)


def test_days_follow_daylight_saving_time() -> None:
    # Berlin moves to UTC+2 on 29 March 2026: that day is 23 hours long.
    start, end = day_bounds(date(2026, 3, 29), "Europe/Berlin")
    assert (start, end) == (at("2026-03-28T23:00:00"), at("2026-03-29T22:00:00"))
    assert local_day(at("2026-03-29T22:30:00"), "Europe/Berlin") == date(2026, 3, 30)


def test_a_date_range_bounds_every_figure_but_balances_carry_the_days_before_it() -> None:
    days = summarize_days(A, "UTC", TRADES, MOVEMENTS)
    figures = report([ACCOUNT], days, {}, first=date(2026, 3, 3), last=date(2026, 3, 3))

    assert figures.headline.trades == 2
    assert [r.date for r in figures.daily_returns] == [date(2026, 3, 3)]
    assert figures.daily_returns[0].start_balance == Decimal(1045)


def test_streaks_across_accounts_follow_the_close_times() -> None:
    a = [
        trade("a1", "2026-03-02T09:00", "2026-03-02T10:00", "1"),
        trade("a2", "2026-03-02T09:00", "2026-03-02T12:00", "1"),
    ]
    b = [trade("b1", "2026-03-02T09:00", "2026-03-02T11:00", "-1")]
    days = summarize_days(A, "UTC", a) + summarize_days(B, "UTC", b)
    accounts = [ACCOUNT, Account(B, "Other", "oanda", "USD")]

    figures = report(accounts, days, {})

    assert figures.headline.streaks == Streaks(1, 1, Streak("win", 1))  # W L W, not W W L
    assert [x.headline.streaks.longest_win for x in figures.by_account] == [2, 0]
    assert [(x.broker, x.headline.trades) for x in figures.by_broker] == [("mt5", 2), ("oanda", 1)]


def test_streaks_of_nothing_are_empty() -> None:
    assert runs_of([]).streaks == Streaks(0, 0, Streak(None, 0))


def random_account_history(seed: int, days: int = 400) -> list[ClosedTrade]:
    rng = random.Random(seed)
    start = at("2025-01-06T00:00:00")
    trades = []
    for n in range(days * 3):
        closed = start + timedelta(seconds=rng.randrange(days * 86400))
        pnl = Decimal(rng.randrange(-4000, 4500)) / 100
        trades.append(ClosedTrade(f"t{n}", closed, closed - timedelta(minutes=5), pnl))
    return trades


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_sharpe_drawdown_and_returns_equal_empyricals_on_the_same_daily_series(seed: int) -> None:
    deposit = [(at("2025-01-03T08:00:00"), Movement("deposit", Decimal("10000")))]
    days = summarize_days(A, "UTC", random_account_history(seed), deposit)
    returns = daily_returns(days, {})
    values = np.array([r.value for r in returns if r.value is not None])
    balances = np.array([float(r.end_balance) for r in returns])

    ours = sharpe(returns)
    assert ours.value == pytest.approx(
        empyrical.sharpe_ratio(values, risk_free=0, period="daily", annualization=252), abs=1e-9
    )
    assert (ours.periods_per_year, ours.risk_free_rate, ours.observations) == (
        252,
        0.0,
        len(values),
    )
    assert max_drawdown(returns, curve(returns)).percent == pytest.approx(
        empyrical.max_drawdown(values), abs=1e-9
    )
    # Without flows after the first day, the returns are the balance curve's simple returns.
    assert values == pytest.approx(empyrical.simple_returns(balances), abs=1e-9)
    growth = curve(returns)[-1].growth
    assert growth - 1 == pytest.approx(empyrical.cum_returns_final(values), abs=1e-9)


def test_sharpe_against_a_risk_free_rate_equals_empyricals() -> None:
    days = summarize_days(
        A,
        "UTC",
        random_account_history(7),
        [(at("2025-01-03T08:00"), Movement("deposit", Decimal(5000)))],
    )
    returns = daily_returns(days, {})
    values = np.array([r.value for r in returns if r.value is not None])

    assert sharpe(returns, risk_free_rate=0.04).value == pytest.approx(
        empyrical.sharpe_ratio(values, risk_free=0.04 / 252, period="daily", annualization=252),
        abs=1e-9,
    )
