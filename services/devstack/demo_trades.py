"""A realistic, seeded stream of MT5 deal webhooks for the demo and the benchmark. Pure."""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

SERVER_OFFSET_SECONDS = 2 * 3600  # a GMT+2 trade server
_SYMBOLS = {
    "EURUSD": (Decimal("1.08500"), Decimal("0.00001"), Decimal(100_000)),
    "GBPUSD": (Decimal("1.27000"), Decimal("0.00001"), Decimal(100_000)),
    "USDJPY": (Decimal("151.200"), Decimal("0.001"), Decimal(1000)),
    "XAUUSD": (Decimal("2330.00"), Decimal("0.01"), Decimal(100)),
}


@dataclass(frozen=True)
class DemoAccount:
    login: int
    server: str
    currency: str = "USD"


@dataclass
class _OpenPosition:
    position_id: int
    symbol: str
    side: int
    volume: Decimal
    entry: Decimal
    remaining: Decimal
    closes_left: int


def deal(
    ticket: int,
    order: int,
    time_s: int,
    deal_type: int,
    entry: int,
    position_id: int,
    volume: Decimal,
    price: Decimal,
    profit: Decimal,
    commission: Decimal,
    symbol: str,
    swap: Decimal = Decimal(0),
    comment: str = "",
) -> dict[str, Any]:
    """One TradeDeal, with exactly the MetaTrader5 package's fields."""
    return {
        "ticket": ticket,
        "order": order,
        "time": time_s,
        "time_msc": time_s * 1000 + ticket % 1000,
        "type": deal_type,
        "entry": entry,
        "magic": 0,
        "position_id": position_id,
        "reason": 0,
        "volume": volume,
        "price": price,
        "commission": commission,
        "swap": swap,
        "profit": profit,
        "fee": Decimal(0),
        "symbol": symbol,
        "comment": comment,
        "external_id": "",
    }


def webhook_body(
    account: DemoAccount, balance: Decimal, equity: Decimal, deals: list[dict[str, Any]]
) -> dict[str, Any]:
    return {
        "account": {
            "login": account.login,
            "server": account.server,
            "currency": account.currency,
            "balance": balance,
            "equity": equity,
        },
        "server_time_offset_seconds": SERVER_OFFSET_SECONDS,
        "deals": deals,
    }


def demo_stream(
    account: DemoAccount, positions: int, seed: int = 7, start_server_time: int = 1_764_000_000
) -> Iterator[dict[str, Any]]:
    """Webhook bodies, oldest first; `positions` positions in all, about 70% of them closed.

    Positions open with one IN deal, close in one to three partial OUT deals (some stay open),
    over several symbols, after an opening deposit; each webhook carries the deals since the
    last one and the account's balance, the way an Expert Advisor reporting on
    OnTradeTransaction would."""
    rng = random.Random(seed)  # noqa: S311 - demo data, not a secret
    balance = Decimal("10000.00")
    now = start_server_time
    ticket = 5_000_000
    yield webhook_body(
        account,
        balance,
        balance,
        [
            deal(
                ticket,
                0,
                now,
                2,
                0,
                0,
                Decimal(0),
                Decimal(0),
                balance,
                Decimal(0),
                "",
                comment="demo deposit",
            )
        ],
    )
    prices = {s: p for s, (p, _, _) in _SYMBOLS.items()}
    open_positions: list[_OpenPosition] = []
    opened = 0
    while opened < positions or any(p.closes_left for p in open_positions):
        now += rng.randint(20, 900)
        deals: list[dict[str, Any]] = []
        for symbol, (_, tick, _) in _SYMBOLS.items():
            prices[symbol] += tick * rng.randint(-40, 40)
        if opened < positions and (not open_positions or rng.random() < 0.55):
            ticket += 1
            symbol = rng.choice(list(_SYMBOLS))
            side = rng.randint(0, 1)
            volume = Decimal(rng.choice([10, 20, 30, 50, 100])) / 100
            position = _OpenPosition(
                ticket,
                symbol,
                side,
                volume,
                prices[symbol],
                volume,
                0 if rng.random() < 0.3 else rng.randint(1, 3),
            )
            open_positions.append(position)
            opened += 1
            commission = -(volume * Decimal("3.5")).quantize(Decimal("0.01"))
            deals.append(
                deal(
                    ticket,
                    ticket,
                    now,
                    side,
                    0,
                    ticket,
                    volume,
                    prices[symbol],
                    Decimal(0),
                    commission,
                    symbol,
                )
            )
            balance += commission
        closable = [p for p in open_positions if p.closes_left]
        if closable and (opened >= positions or rng.random() < 0.5):
            position = rng.choice(closable)
            ticket += 1
            volume = (
                position.remaining
                if position.closes_left == 1
                else ((position.remaining / 2).quantize(Decimal("0.01")) or position.remaining)
            )
            price = prices[position.symbol]
            direction = 1 if position.side == 0 else -1
            contract = _SYMBOLS[position.symbol][2]
            profit = ((price - position.entry) * direction * volume * contract).quantize(
                Decimal("0.01")
            )
            commission = -(volume * Decimal("3.5")).quantize(Decimal("0.01"))
            position.remaining -= volume
            position.closes_left = 0 if position.remaining == 0 else position.closes_left - 1
            if position.remaining == 0:
                open_positions.remove(position)
            deals.append(
                deal(
                    ticket,
                    ticket,
                    now,
                    1 - position.side,
                    1,
                    position.position_id,
                    volume,
                    price,
                    profit,
                    commission,
                    position.symbol,
                )
            )
            balance += profit + commission
        if deals:
            yield webhook_body(account, balance, balance, deals)
