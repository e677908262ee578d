"""The dashboard in a real browser (Debian's headless Chromium) against the real API process:
a trader's MT5 history goes through the whole pipeline into Postgres, the page signs in from its
link, and what it shows (connections and their sync status, the headline figures, every point
of the curve, every calendar cell, every histogram bar, every breakdown row) is what the API
answers for the same query."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import asyncpg
import httpx
import pytest
from selenium.webdriver.chrome.webdriver import WebDriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select

from services.api.tokens import mint_token
from services.devstack.demo import encode_body, send_signed, wait_for_events
from services.devstack.demo_trades import SERVER_OFFSET_SECONDS, DemoAccount, deal, webhook_body
from services.devstack.stack import DevStack
from services.shared.vault import CredentialVault
from tests.support.browser import console_errors, headless_chromium, script, wait_for
from tests.support.builders import connect_broker_account, new_connection

pytestmark = pytest.mark.e2e

# Not UTC, so the page's zone is seen to reach the API: a trade closing at 03:30 UTC is on the
# day before in New York.
ZONE = "America/New_York"
FIRST_DAY = datetime(2026, 11, 2, 8, 0, tzinfo=UTC)  # a Monday
DEPOSIT = Decimal("10000.00")


@pytest.fixture(scope="module")
def stack_env(stack_env: dict[str, str]) -> dict[str, str]:
    """The API's per-user budget out of the way: the page and the spec both read as the same
    user within the same second."""
    return stack_env | {"POSCAL_API_RATE_LIMIT_PER_USER": "100000/minute"}


@dataclass(frozen=True)
class Trade:
    opened: datetime
    seconds: int
    profit: str
    commission: str = "-1.00"


# One trade in each duration bucket (and two in one), wins, losses and a breakeven, over three
# weeks; one closes at 03:30 UTC.
TRADES = (
    Trade(FIRST_DAY, 30, "25.50"),
    Trade(FIRST_DAY + timedelta(hours=1), 180, "-12.30"),
    Trade(FIRST_DAY + timedelta(days=1), 600, "40.00"),
    Trade(FIRST_DAY + timedelta(days=2), 2400, "0.00", commission="0.00"),
    Trade(FIRST_DAY + timedelta(days=3), 7200, "-55.25"),
    Trade(FIRST_DAY + timedelta(days=4), 6 * 3600, "80.10"),
    Trade(FIRST_DAY + timedelta(days=7), 2 * 86400, "120.00"),
    Trade(FIRST_DAY + timedelta(days=8), 10 * 86400, "-33.33"),
    Trade(FIRST_DAY + timedelta(days=9, hours=19, minutes=10), 1200, "15.00"),
    Trade(FIRST_DAY + timedelta(days=14), 5400, "-20.00"),
)


def _server_time(moment: datetime) -> int:
    return int(moment.timestamp()) + SERVER_OFFSET_SECONDS


def history_webhooks(account: DemoAccount) -> list[bytes]:
    """The account's deals in time order, one webhook each with the balance after it, as the
    Expert Advisor sends them: a deposit, then each trade's opening and closing deal."""
    events: list[tuple[datetime, dict[str, Any], Decimal]] = []
    ticket = 9_000_000
    events.append(
        (
            FIRST_DAY - timedelta(hours=1),
            deal(
                ticket, 0, _server_time(FIRST_DAY - timedelta(hours=1)), 2, 0, 0,
                Decimal(0), Decimal(0), DEPOSIT, Decimal(0), "", comment="deposit",
            ),
            DEPOSIT,
        )
    )  # fmt: skip
    for trade in TRADES:
        ticket += 2
        position = ticket
        closed = trade.opened + timedelta(seconds=trade.seconds)
        commission = Decimal(trade.commission)
        volume, price = Decimal("0.10"), Decimal("1.08000")
        events.append(
            (
                trade.opened,
                deal(
                    ticket, ticket, _server_time(trade.opened), 0, 0, position, volume, price,
                    Decimal(0), commission, "EURUSD",
                ),
                commission,
            )
        )  # fmt: skip
        events.append(
            (
                closed,
                deal(
                    ticket + 1, ticket + 1, _server_time(closed), 1, 1, position, volume, price,
                    Decimal(trade.profit), commission, "EURUSD",
                ),
                Decimal(trade.profit) + commission,
            )
        )  # fmt: skip
    balance = Decimal(0)
    bodies = []
    for _, one_deal, change in sorted(events, key=lambda event: event[0]):
        balance += change
        bodies.append(encode_body(webhook_body(account, balance, balance, [one_deal])))
    return bodies


@dataclass(frozen=True)
class Trader:
    user_id: uuid.UUID
    token: str


@pytest.fixture(scope="module")
async def trader(stack: DevStack, pool: asyncpg.Pool, vault: CredentialVault) -> Trader:
    """A user with an MT5 demo account fed its history through ingest, a live OANDA connection
    waiting for credentials, and a paused IBKR demo connection whose syncs failed."""
    async with pool.acquire() as conn:
        mt5 = await new_connection(conn, vault, ingest_url=stack.ingest_url)
        await connect_broker_account(
            conn, vault, mt5.user_id, "oanda", "101-004-1-001", connection_type="live",
            account_label="OANDA live", ingest_url=stack.ingest_url,
        )  # fmt: skip
        ibkr = await connect_broker_account(
            conn, vault, mt5.user_id, "ibkr", "DU7654321", account_label="IBKR paper",
            ingest_url=stack.ingest_url,
        )  # fmt: skip
        # What the poller records after failed syncs, and the user's pause.
        await conn.execute(
            "UPDATE mt5_connections SET status = 'error', lifecycle = 'paused',"
            " last_error = 'the broker refused the token' WHERE id = $1",
            ibkr.connection_id,
        )
    bodies = history_webhooks(DemoAccount(mt5.login, "PosCal-Test"))
    async with httpx.AsyncClient(timeout=10) as client:
        for body in bodies:
            (await send_signed(client, mt5.created, body)).raise_for_status()
    async with pool.acquire() as conn:
        written = await wait_for_events(conn, mt5.created.connection_id, len(bodies), 60)
    assert written == len(bodies)
    assert stack.api_jwt_secret is not None
    token = mint_token(
        stack.api_jwt_secret, mt5.user_id, now=datetime.now(UTC), lifetime=timedelta(minutes=15)
    )
    return Trader(mt5.user_id, token)


def api_get(stack: DevStack, trader: Trader, path: str, query: str = "") -> Any:
    response = httpx.get(
        f"{stack.api_url}{path}{'?' + query if query else ''}",
        headers={"Authorization": f"Bearer {trader.token}"},
        timeout=10,
    )
    assert response.status_code == 200, response.text
    return response.json()


# What the page prints, as numbers.js prints it: decimals rounded half away from zero from their
# exact digits (a JSON number from its exact binary value, as toFixed does), thousands grouped.
def shown(value: str | float | int | None, places: int = 2) -> str:
    if value is None:
        return "—"
    exact = Decimal(value).quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP)
    return format(abs(exact) if exact == 0 else exact, ",")


def percent(fraction: float | None, places: int = 1) -> str:
    return "—" if fraction is None else f"{shown(fraction * 100, places)} %"


def state_of(browser: WebDriver, element_id: str) -> str | None:
    found: str | None = script(
        browser, "return document.getElementById(arguments[0]).dataset.state ?? null", element_id
    )
    return found


def analytics_shown(browser: WebDriver, connection_type: str) -> bool:
    section = browser.find_element(By.ID, "analytics")
    query = parse_qs(section.get_attribute("data-query") or "")
    return state_of(browser, "analytics") in ("ready", "empty") and query.get(
        "connection_type"
    ) == [connection_type]


READ_PAGE = """
const all = (selector, root = document) => [...root.querySelectorAll(selector)];
const data = (node) => ({ ...node.dataset });
return {
  connections: all("#connections tbody tr").map((row) => ({
    id: row.dataset.connectionId,
    cells: Object.fromEntries(all("td", row).map((td) => [td.dataset.field, td.textContent])),
    status: row.querySelector("[data-status]")?.dataset.status ?? null,
    lifecycle: row.querySelector("[data-lifecycle]")?.dataset.lifecycle ?? null,
    lastSync: row.querySelector("[data-field=last-sync] time")?.getAttribute("datetime") ?? null,
  })),
  tiles: Object.fromEntries(all("#headline [data-figure], #streaks [data-figure]").map(
    (tile) => [tile.dataset.figure, tile.querySelector("dd").textContent])),
  curvePoints: all("#equity circle.point").map(data),
  curveVertices: document.querySelector("#equity polyline.curve")?.points.numberOfItems ?? 0,
  days: all("#calendar rect.day").length,
  tradedDays: all("#calendar rect.day.traded").map(data),
  weeks: all("#calendar rect.week").map(data),
  bars: all("#durations rect.bar").map(data),
  barCounts: all("#durations text.count").map((text) => text.textContent),
  median: document.getElementById("duration-median").textContent,
  breakdown: all("#breakdown tbody tr[data-kind]").map((row) => ({
    kind: row.dataset.kind,
    key: row.dataset.key,
    cells: Object.fromEntries(all("td", row).map((td) => [td.dataset.column, td.textContent])),
  })),
};
"""


def expected_connection(connection: dict[str, Any], status: dict[str, Any]) -> dict[str, Any]:
    sync_state = status["sync_state"]
    credentials = [sync_state.replace("_", " ")] if sync_state not in (None, "scheduled") else []
    credentials.append(f"rotation {status['rotation']['state']}")
    lifecycle = status["lifecycle"]
    return {
        "id": connection["id"],
        "label": connection["account_label"],
        "broker": connection["broker"],
        "type": connection["connection_type"],
        "failures": str(status["consecutive_failures"]),
        "credentials": " · ".join(credentials),
        "status": status["status"],
        "lifecycle": None if lifecycle == "active" else lifecycle,
        "lastSync": status["last_sync_at"],
    }


def shown_connection(row: dict[str, Any]) -> dict[str, Any]:
    cells = row["cells"]
    return {
        "id": row["id"],
        "label": cells["label"],
        "broker": cells["broker"],
        "type": cells["type"],
        "failures": cells["failures"],
        "credentials": cells["credentials"],
        "status": row["status"],
        "lifecycle": row["lifecycle"],
        "lastSync": row["lastSync"],
    }


def expected_tiles(analytics: dict[str, Any]) -> dict[str, str]:
    h, dd, sharpe = analytics["headline"], analytics["max_drawdown"], analytics["sharpe"]
    current = h["streaks"]["current"]
    if current["kind"] is None:
        streak = "—"
    else:
        plural = "" if current["trades"] == 1 else ("s" if current["kind"] == "win" else "es")
        streak = f"{current['trades']} {current['kind']}{plural}"
    if dd["peak_date"] is None:
        recovery = "no drawdown"
    elif dd["recovery_days"] is None:
        recovery = "not recovered"
    else:
        recovery = f"recovered in {dd['recovery_days']} days"
    return {
        "net_pnl": shown(h["net_pnl"]),
        "trades": str(h["trades"]),
        "win_rate": percent(h["win_rate"]),
        "profit_factor": shown(h["profit_factor"]),
        "expectancy": shown(h["expectancy"]),
        "sharpe": shown(sharpe["value"]),
        "max_drawdown": f"{percent(dd['percent'], 2)} · {shown(dd['amount'])}",
        "recovery": recovery,
        "average_win": shown(h["average_win"]),
        "average_loss": shown(h["average_loss"]),
        "largest_win": shown(h["largest_win"]),
        "largest_loss": shown(h["largest_loss"]),
        "longest_win": str(h["streaks"]["longest_win"]),
        "longest_loss": str(h["streaks"]["longest_loss"]),
        "current_streak": streak,
    }


def expected_breakdown_cells(h: dict[str, Any]) -> dict[str, str]:
    return {
        "Trades": str(h["trades"]),
        "Wins": str(h["wins"]),
        "Losses": str(h["losses"]),
        "Win rate": percent(h["win_rate"]),
        "Net P&L": shown(h["net_pnl"]),
        "Profit factor": shown(h["profit_factor"]),
        "Expectancy": shown(h["expectancy"]),
        "Largest win": shown(h["largest_win"]),
        "Largest loss": shown(h["largest_loss"]),
        "Longest streaks (W / L)": (
            f"{h['streaks']['longest_win']} / {h['streaks']['longest_loss']}"
        ),
    }


def expected_breakdown(analytics: dict[str, Any]) -> list[dict[str, Any]]:
    rows = [("all", "all", analytics["headline"])]
    rows += [("broker", b["broker"], b["headline"]) for b in analytics["by_broker"]]
    rows += [("account", a["account_id"], a["headline"]) for a in analytics["by_account"]]
    return [
        {"kind": kind, "key": key, "cells": expected_breakdown_cells(headline)}
        for kind, key, headline in rows
    ]


def without_names(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [row | {"cells": {k: v for k, v in row["cells"].items() if k != "name"}} for row in rows]


def calendar_days(daily: list[dict[str, Any]]) -> int:
    dates = [datetime.fromisoformat(day["date"]) for day in daily]
    return (max(dates) - min(dates)).days + 1


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[WebDriver]:
    with headless_chromium(tmp_path / "chromium-profile", time_zone=ZONE) as browser:
        yield browser


def test_the_dashboard_shows_what_the_api_answers(
    stack: DevStack, trader: Trader, browser: WebDriver
) -> None:
    browser.get(f"{stack.api_url}/dashboard#access_token={trader.token}")
    wait_for(browser, lambda b: state_of(b, "connections") == "ready")
    # Live accounts first (the user has one); demo figures only when asked for.
    wait_for(browser, lambda b: analytics_shown(b, "live"))
    live_query = browser.find_element(By.ID, "analytics").get_attribute("data-query") or ""
    assert parse_qs(live_query)["time_zone"] == [ZONE]
    live = api_get(stack, trader, "/v1/analytics", live_query)
    nothing_live = live["headline"]["trades"] == 0 and live["curve"] == []
    assert state_of(browser, "analytics") == ("empty" if nothing_live else "ready")

    Select(browser.find_element(By.ID, "filter-type")).select_by_value("demo")
    wait_for(browser, lambda b: analytics_shown(b, "demo"))
    assert state_of(browser, "analytics") == "ready"
    demo_query = browser.find_element(By.ID, "analytics").get_attribute("data-query") or ""
    page = script(browser, READ_PAGE)

    connections = api_get(stack, trader, "/v1/connections", "limit=100")["connections"]
    statuses = [api_get(stack, trader, f"/v1/connections/{c['id']}/status") for c in connections]
    assert len(connections) == 3
    assert [shown_connection(row) for row in page["connections"]] == [
        expected_connection(c, s) for c, s in zip(connections, statuses, strict=True)
    ]
    assert {row["status"] for row in page["connections"]} == {"idle", "error"}

    analytics = api_get(stack, trader, "/v1/analytics", demo_query)
    assert analytics["filters"]["connection_type"] == "demo"
    assert analytics["filters"]["time_zone"] == ZONE
    assert analytics["headline"]["trades"] == len(TRADES)
    assert page["tiles"] == expected_tiles(analytics)

    curve = analytics["curve"]
    assert len(curve) > 1
    assert page["curveVertices"] == len(page["curvePoints"]) == len(curve)
    assert [(p["date"], p["balance"], float(p["drawdown"])) for p in page["curvePoints"]] == [
        (p["date"], p["balance"], p["drawdown"]) for p in curve
    ]

    daily, weekly = analytics["calendar"]["daily"], analytics["calendar"]["weekly"]
    assert page["tradedDays"] == [
        {"date": d["date"], "pnl": d["pnl"], "trades": str(d["trades"])} for d in daily
    ]
    assert page["days"] == calendar_days(daily)
    # The trade closing at 03:30 UTC on the 12th is on the 11th in the page's zone.
    assert "2026-11-12" not in {day["date"] for day in page["tradedDays"]}
    assert page["weeks"] == [
        {"weekStart": w["week_start"], "pnl": w["pnl"], "trades": str(w["trades"])} for w in weekly
    ]

    buckets = analytics["durations"]["buckets"]
    assert len(buckets) == 8
    assert page["bars"] == [{"bucket": b["label"], "trades": str(b["trades"])} for b in buckets]
    assert page["barCounts"] == [str(b["trades"]) for b in buckets]
    assert sum(b["trades"] for b in buckets) == len(TRADES)

    assert without_names(page["breakdown"]) == expected_breakdown(analytics)
    assert console_errors(browser) == []


def test_signing_in_keeps_the_token_out_of_the_address_bar_and_the_server_logs(
    stack: DevStack, trader: Trader, browser: WebDriver
) -> None:
    browser.get(f"{stack.api_url}/dashboard#access_token={trader.token}")
    wait_for(browser, lambda b: analytics_shown(b, "live"))  # every request made
    assert browser.current_url == f"{stack.api_url}/dashboard"
    assert script(browser, "return sessionStorage.getItem('poscal.accessToken')") == trader.token
    shown_user = browser.find_element(By.ID, "who-user").get_attribute("data-user-id")
    assert shown_user == str(trader.user_id)
    # The page broke none of its policy's rules (a violation is a console error) and no
    # request failed.
    assert console_errors(browser) == []
    assert trader.token not in (stack.logs / "api.log").read_text()

    browser.find_element(By.ID, "sign-out").click()
    wait_for(browser, _signed_out)
    assert script(browser, "return sessionStorage.getItem('poscal.accessToken')") is None


def test_an_expired_token_asks_to_sign_in_again_and_a_pasted_one_signs_in(
    stack: DevStack, trader: Trader, browser: WebDriver
) -> None:
    assert stack.api_jwt_secret is not None
    expired = mint_token(
        stack.api_jwt_secret,
        trader.user_id,
        now=datetime.now(UTC) - timedelta(hours=2),
        lifetime=timedelta(minutes=5),
    )
    browser.get(f"{stack.api_url}/dashboard#access_token={expired}")
    wait_for(browser, _signed_out)
    assert "expired" in browser.find_element(By.ID, "sign-in-reason").text
    assert not browser.find_element(By.ID, "signed-in").is_displayed()

    browser.find_element(By.ID, "token-input").send_keys(trader.token)
    browser.find_element(By.CSS_SELECTOR, "#sign-in-form button").click()
    wait_for(browser, lambda b: state_of(b, "connections") == "ready")
    assert len(browser.find_elements(By.CSS_SELECTOR, "#connections tbody tr")) == 3


# Decimal strings as the API writes money (and as Python's str(Decimal) could), and JSON numbers
# as it writes ratios: halves both ways, exact binary ties, exponents, signed zeros.
NUMBERS: list[str | float] = [
    "0", "1234.5", "-1234.565", "0.005", "-0.004", "-0.005", "1E+3", "0E-8", "999.995",
    "12345678.901", "-1000000", "7", 0.125, -0.125, -2.675, 1e-7, 33.33333, 1234567.891, 0.0,
]  # fmt: skip


PRINT_NUMBERS = """
const [values, done] = arguments;
import("/dashboard/numbers.js").then(({ fixed, percent }) => done(values.map(
  (v) => [fixed(v, 2), fixed(v, 0), typeof v === "number" ? percent(v) : null])));
"""


def test_the_page_prints_numbers_as_this_spec_reads_them(
    stack: DevStack, browser: WebDriver
) -> None:
    browser.get(f"{stack.api_url}/dashboard")
    wait_for(browser, _signed_out)
    printed = browser.execute_async_script(PRINT_NUMBERS, NUMBERS)
    assert printed == [
        [shown(v, 2), shown(v, 0), percent(v) if isinstance(v, float) else None] for v in NUMBERS
    ]


def _signed_out(browser: WebDriver) -> bool:
    return bool(script(browser, "return document.body.dataset.state === 'signed-out'"))
