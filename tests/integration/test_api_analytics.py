"""`GET /v1/analytics` through the app API, on what the writer wrote: the hand-worked figures,
live and demo never mixed, the user's time zone, other users' accounts out of sight, and the
rollup kept up to date after the first request filled it."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import asyncpg
import pytest

from services.shared.analytics.days import (
    ClosedTrade,
    Movement,
    local_day,
    summarize_days,
    trade_pnl,
)
from services.shared.analytics.metrics import Anchor
from services.shared.analytics.report import Account, report
from services.shared.vault import CredentialVault
from services.writer.repository import JournalRepository
from tests.integration.test_analytics_rollup import batch, history, trade
from tests.support.api import RunningApi, api_settings, bearer, hs256, running_api
from tests.support.builders import TestConnection, new_connection

pytestmark = pytest.mark.integration
REPOSITORY = JournalRepository()


@pytest.fixture
async def api(pool: asyncpg.Pool, database_url: str) -> AsyncIterator[RunningApi]:
    async with running_api(api_settings(database_url), pool) as running:
        yield running


async def synced(pool: asyncpg.Pool, vault: CredentialVault) -> TestConnection:
    """A user whose demo MT5 account's week of history the writer has written."""
    async with pool.acquire() as conn:
        connection = await new_connection(conn, vault)
        await REPOSITORY.apply(conn, [batch(connection, history())])
    return connection


async def analytics(api: RunningApi, user_id: uuid.UUID, **query: str) -> dict[str, Any]:
    response = await api.client.get("/v1/analytics", params=query, headers=bearer(hs256(user_id)))
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


async def test_demo_figures_are_left_out_unless_asked_for_and_then_equal_the_hand_worked_ones(
    api: RunningApi, pool: asyncpg.Pool, vault: CredentialVault
) -> None:
    connection = await synced(pool, vault)

    live = await analytics(api, connection.user_id)
    demo = await analytics(api, connection.user_id, connection_type="demo")

    assert live["filters"]["accounts"] == [] and live["headline"]["trades"] == 0
    assert live["excluded"] == {"other_connection_type_accounts": 1}
    assert demo["filters"]["accounts"] == [str(connection.created.account_id)]
    assert demo["excluded"] == {"other_connection_type_accounts": 0}
    h = demo["headline"]
    assert (h["trades"], h["wins"], h["losses"], h["breakevens"]) == (6, 2, 3, 1)
    assert h["win_rate"] == 0.4
    assert (h["gross_profit"], h["gross_loss"], h["net_pnl"]) == ("83.00", "-76.50", "6.50")
    assert (h["largest_win"], h["largest_loss"]) == ("59.00", "-41.00")
    # W L (B) W L L by close time.
    assert h["streaks"] == {
        "longest_win": 1,
        "longest_loss": 2,
        "current": {"kind": "loss", "trades": 2},
    }
    assert demo["currencies"] == ["USD"]
    assert [b["broker"] for b in demo["by_broker"]] == ["mt5"]
    assert demo["by_account"][0]["headline"] == h
    assert demo["sharpe"]["periods_per_year"] == 252 and demo["sharpe"]["risk_free_rate"] == 0.0


async def test_the_calendar_is_in_the_users_time_zone(
    api: RunningApi, pool: asyncpg.Pool, vault: CredentialVault
) -> None:
    connection = await synced(pool, vault)

    utc = await analytics(api, connection.user_id, connection_type="demo")
    berlin = await analytics(
        api, connection.user_id, connection_type="demo", time_zone="Europe/Berlin"
    )

    def days(answer: dict[str, Any]) -> dict[str, tuple[str, int]]:
        return {d["date"]: (d["pnl"], d["trades"]) for d in answer["calendar"]["daily"]}

    # The loss closed at 23:30 UTC on 2 March is Berlin's 3 March.
    assert days(utc)["2026-03-02"] == ("-17.00", 2)
    assert days(berlin)["2026-03-02"] == ("24.00", 1)
    assert days(berlin)["2026-03-03"] == ("-41.00", 2)
    assert berlin["filters"]["time_zone"] == "Europe/Berlin"
    assert sum(w["trades"] for w in berlin["calendar"]["weekly"]) == 6


async def test_the_answer_equals_the_figures_computed_from_the_journal_rows(
    api: RunningApi, pool: asyncpg.Pool, vault: CredentialVault
) -> None:
    connection = await synced(pool, vault)
    zone = "America/New_York"
    answer = await analytics(api, connection.user_id, connection_type="demo", time_zone=zone)

    account_id = connection.created.account_id
    trades = [
        ClosedTrade(
            r["mt5_trade_id"],
            r["closed_at"],
            r["opened_at"],
            trade_pnl(r["profit"], r["commission"], r["swap"], r["fees"]),
        )
        for r in await pool.fetch(
            "SELECT * FROM trading_journal WHERE account_id = $1 AND status = 'closed'",
            account_id,
        )
    ]
    movements = [
        (r["executed_at"], Movement(r["kind"], r["amount"]))
        for r in await pool.fetch(
            "SELECT * FROM broker_cash_movements WHERE account_id = $1 AND position_key IS NULL",
            account_id,
        )
    ]
    stored = await pool.fetchrow(
        "SELECT name, current_balance, balance_as_of FROM trading_accounts WHERE id = $1",
        account_id,
    )
    assert stored is not None
    expected = report(
        [Account(account_id, stored["name"], "mt5", "USD")],
        summarize_days(account_id, zone, trades, movements),
        {account_id: Anchor(stored["current_balance"], local_day(stored["balance_as_of"], zone))},
    )
    assert answer["headline"]["net_pnl"] == str(expected.headline.net_pnl)
    assert [r["value"] for r in answer["daily_returns"]] == [
        r.value for r in expected.daily_returns
    ]
    assert [p["balance"] for p in answer["curve"]] == [str(p.balance) for p in expected.curve]
    assert answer["max_drawdown"]["percent"] == expected.max_drawdown.percent
    assert answer["sharpe"]["value"] == expected.sharpe.value
    assert answer["durations"]["median_seconds"] == expected.durations.median_seconds


async def test_deals_written_after_the_first_request_are_in_the_next_answer(
    api: RunningApi, pool: asyncpg.Pool, vault: CredentialVault
) -> None:
    connection = await synced(pool, vault)
    before = await analytics(
        api, connection.user_id, connection_type="demo", time_zone="Asia/Tokyo"
    )

    async with pool.acquire() as conn:
        later = trade(9, "2026-03-09T01:00:00", "2026-03-09T02:00:00", "101")
        await REPOSITORY.apply(conn, [batch(connection, later)])
    after = await analytics(api, connection.user_id, connection_type="demo", time_zone="Asia/Tokyo")

    assert after["headline"]["trades"] == before["headline"]["trades"] + 1
    assert Decimal(after["headline"]["net_pnl"]) == Decimal(before["headline"]["net_pnl"]) + 100


async def test_the_curve_ends_at_the_reported_balance_with_the_equity_of_that_day(
    api: RunningApi, pool: asyncpg.Pool, vault: CredentialVault
) -> None:
    connection = await synced(pool, vault)
    await pool.execute(
        "UPDATE trading_accounts SET current_balance = 900, equity = 912.5,"
        " balance_as_of = '2026-03-09T12:00:00Z' WHERE id = $1",
        connection.created.account_id,
    )

    curve = (await analytics(api, connection.user_id, connection_type="demo"))["curve"]

    assert curve[-1]["date"] == "2026-03-09"
    assert (Decimal(curve[-1]["balance"]), curve[-1]["equity"]) == (Decimal(900), "912.5")
    assert all(point["equity"] is None for point in curve[:-1])


async def test_another_users_accounts_are_never_counted_even_when_named(
    api: RunningApi, pool: asyncpg.Pool, vault: CredentialVault
) -> None:
    alice = await synced(pool, vault)
    async with pool.acquire() as conn:
        bob = await new_connection(conn, vault)

    answer = await analytics(
        api,
        bob.user_id,
        connection_type="demo",
        accounts=f"{alice.created.account_id},{bob.created.account_id}",
    )

    assert answer["filters"]["accounts"] == [str(bob.created.account_id)]
    assert answer["headline"]["trades"] == 0


async def test_filters_by_broker_and_dates(
    api: RunningApi, pool: asyncpg.Pool, vault: CredentialVault
) -> None:
    connection = await synced(pool, vault)

    oanda = await analytics(api, connection.user_id, connection_type="demo", broker="oanda")
    two_days = await analytics(
        api,
        connection.user_id,
        connection_type="demo",
        from_date="2026-03-03",
        to_date="2026-03-04",
    )

    assert oanda["filters"]["accounts"] == [] and oanda["headline"]["trades"] == 0
    assert two_days["headline"]["trades"] == 2
    assert {d["date"] for d in two_days["calendar"]["daily"]} == {"2026-03-03", "2026-03-04"}


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ({"time_zone": "Mars/Olympus"}, "query.time_zone"),
        ({"time_zone": "../etc/passwd"}, "query.time_zone"),
        ({"from_date": "2026-03-05", "to_date": "2026-03-01"}, "query.to_date"),
        ({"accounts": "not-an-id"}, "query.accounts"),
        ({"connection_type": "both"}, "query.connection_type"),
    ],
)
async def test_filters_that_are_not_valid_are_refused(
    api: RunningApi, pool: asyncpg.Pool, vault: CredentialVault, query: dict[str, str], field: str
) -> None:
    async with pool.acquire() as conn:
        user = await new_connection(conn, vault)
    response = await api.client.get(
        "/v1/analytics", params=query, headers=bearer(hs256(user.user_id))
    )

    assert response.status_code == 422
    assert [f["path"] for f in response.json()["fields"]] == [field]
