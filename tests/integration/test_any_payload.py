"""Arbitrary JSON (or XML text) in every field of every broker's payload, through the real mapper,
canonical model, aggregation and repository against the real Postgres: every item is either
written or dead-lettered with a reason, and nothing else happens (no exception escapes, nothing
is retried, no service would stop).

Each example is a fresh tenant, so what it finds in the database is its own doing. The items are
mutations of real ones: some fields replaced by anything JSON can hold (huge and tiny numbers,
lone surrogates, NUL, deep nesting, objects where text belongs), sometimes the whole item.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from decimal import Decimal, localcontext
from typing import Any
from xml.sax.saxutils import quoteattr

import asyncpg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.normalizer.pipeline import Normalizer
from services.shared.canonical import EXACT, CanonicalBatch
from services.shared.connection_admin.connections import create_user
from services.shared.dead_letters import DeadLetter, DeadLetterBudget, DeadLetterPublisher
from services.shared.envelope import ConnectionRef, RawEvent
from services.shared.vault import CredentialVault
from services.writer.pipeline import Writer
from services.writer.repository import JournalRepository
from tests.support.builders import FIXTURES, connect_broker_account, fixture_deals
from tests.support.json_as_sent import Verbatim, json_as_sent
from tests.support.producers import FakeProducer
from tests.support.records import consumer_record

pytestmark = pytest.mark.integration

EXAMPLES = settings(
    max_examples=60,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
TEXT = st.text(st.characters(codec=None, exclude_categories=()), max_size=40) | st.sampled_from(
    ["\ud800", "a\x00b", "", " ", "1e999999", "NaN", "-0", "9" * 40, "2024-13-45T25:61:61Z"]
)
NUMBERS = (
    st.integers()
    | st.integers(min_value=2**63, max_value=2**80)
    | st.decimals(allow_nan=True, allow_infinity=False)
    | st.sampled_from(
        [Decimal("1e200000"), Decimal("1e999999"), Decimal("-1e-999999"), Decimal("1e15")]
    )
)


def nesting(depth: int) -> Verbatim:
    """Deep nesting, beyond what a recursive encoder writes, as JSON text put in as it is."""
    return Verbatim("[" * depth + "0" + "]" * depth)


ANY_JSON = st.recursive(
    st.none() | st.booleans() | NUMBERS | TEXT,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(TEXT, children, max_size=4),
    max_leaves=12,
) | st.integers(50, 400).map(nesting)


@st.composite
def mutated(draw: st.DrawFn, base: dict[str, Any]) -> Any:
    """`base` with some fields replaced by anything, some added; or anything at all."""
    if draw(st.integers(0, 9)) == 0:
        return draw(ANY_JSON)
    item = dict(base)
    for name in draw(st.lists(st.sampled_from(sorted(base)), max_size=4, unique=True)):
        item[name] = draw(ANY_JSON)
    if draw(st.booleans()):
        item[draw(TEXT)] = draw(ANY_JSON)
    return item


# --- the tenants ---------------------------------------------------------------------------


async def new_tenant(
    pool: asyncpg.Pool, vault: CredentialVault, broker: str, account: str, server: str
) -> ConnectionRef:
    async with pool.acquire() as conn:
        user_id = await create_user(conn, f"any-{uuid.uuid4().hex[:12]}@poscal.test")
        created = await connect_broker_account(
            conn, vault, user_id, broker, account, server=server, account_label="any payload"
        )
    return ConnectionRef(
        connection_id=created.connection_id,
        user_id=user_id,
        account_id=created.account_id,
        broker=broker,
        connection_type="demo",
        account_number=account,
        server=server or None,
    )


def unique_number() -> int:
    return 10_000_000 + uuid.uuid4().int % 10**12


# --- through the pipeline ------------------------------------------------------------------


class Outcome:
    """What became of one event: its dead letters, and whether the writer wrote it."""

    def __init__(self, letters: list[DeadLetter], canonical: CanonicalBatch | None) -> None:
        self.letters = letters
        self.canonical = canonical

    def refused_whole(self) -> bool:
        return any(not x.rejections and not x.rejections_truncated for x in self.letters)

    def rejected_indexes(self) -> set[int]:
        return {r.index for x in self.letters for r in x.rejections if r.index is not None}

    def all_listed(self) -> bool:
        return not any(x.rejections_truncated for x in self.letters)


async def through_pipeline(pool: asyncpg.Pool, connection: ConnectionRef, body: bytes) -> Outcome:
    """The real normalizer and writer on one event; any exception out of either fails the test
    (it would stall the partition, or stop the service, for every tenant on it)."""
    now = datetime.now(UTC)
    event = RawEvent.wrap(
        source="webhook" if connection.broker == "mt5" else "poller",
        connection=connection,
        received_at=now,
        delivery_id=f"any_{uuid.uuid4().hex}",
        body=body,
        sent_at=now,
    )
    producer = FakeProducer()
    budget = DeadLetterBudget(10**9)
    await Normalizer(
        producer,
        "canonical",
        DeadLetterPublisher(producer, "dead", "normalizer", budget),
        "any-normalizer",
    ).handle([consumer_record(event.model_dump_json().encode())])
    canonical = [CanonicalBatch.model_validate_json(v) for v in producer.sent.get("canonical", [])]
    if canonical:
        writer = Writer(
            pool,
            JournalRepository(),
            DeadLetterPublisher(producer, "dead", "writer", budget),
            "any-writer",
        )
        await writer.handle(
            [consumer_record(v, topic="canonical") for v in producer.sent["canonical"]]
        )
    letters = [DeadLetter.model_validate_json(v) for v in producer.sent.get("dead", [])]
    for letter in letters:
        assert letter.reason_code and letter.reason, letter
        assert all(r.code and r.detail for r in letter.rejections), letter
    return Outcome(letters, canonical[0] if canonical else None)


async def keys_written(pool: asyncpg.Pool, connection: ConnectionRef) -> set[str]:
    rows = await pool.fetch(
        "SELECT fill_key AS key FROM broker_fills WHERE connection_id = $1"
        " UNION ALL SELECT movement_key FROM broker_cash_movements WHERE connection_id = $1",
        connection.connection_id,
    )
    return {r["key"] for r in rows}


def is_own_key(key: str, item_key: str) -> bool:
    """`key` is the item's own record (`item_key`) or one of its parts (`item_key:...`)."""
    return key == item_key or key.startswith(item_key + ":")


async def check_every_item_accounted_for(
    pool: asyncpg.Pool,
    connection: ConnectionRef,
    outcome: Outcome,
    items: Sequence[Any],
    key_of: Any,
    skippable: Any = lambda _item: False,
) -> None:
    if outcome.refused_whole():
        return  # dead-lettered with its reason, all of it
    assert outcome.canonical is not None
    written = await keys_written(pool, connection)
    writer_refused = any(x.stage == "writer" for x in outcome.letters)
    if not writer_refused:
        await check_stored_as_mapped(pool, connection, outcome.canonical)
    rejected = outcome.rejected_indexes()
    for index, item in enumerate(items):
        if index in rejected or skippable(item):
            continue
        item_key = key_of(item)
        if writer_refused or not outcome.all_listed():
            continue  # the whole event is in a dead letter with its reason
        assert item_key is not None and any(is_own_key(k, item_key) for k in written), (
            index,
            item,
        )


async def check_stored_as_mapped(
    pool: asyncpg.Pool, connection: ConnectionRef, batch: CanonicalBatch
) -> None:
    """What the database holds is exactly what was mapped: nothing rounded, clamped or zeroed
    (the class of a balance once stored as 0)."""
    fills = {
        r["fill_key"]: r
        for r in await pool.fetch(
            "SELECT * FROM broker_fills WHERE connection_id = $1", connection.connection_id
        )
    }
    for fill in batch.fills:
        row = fills[fill.fill_key]
        for field in ("volume", "price", "profit", "commission", "swap", "fee"):
            assert row[field] == getattr(fill, field), (fill.fill_key, field)
        assert (row["symbol"], row["executed_at"]) == (fill.symbol, fill.executed_at)
    movements = {
        r["movement_key"]: r
        for r in await pool.fetch(
            "SELECT * FROM broker_cash_movements WHERE connection_id = $1",
            connection.connection_id,
        )
    }
    for movement in batch.cash_movements:
        assert movements[movement.movement_key]["amount"] == movement.amount
    if batch.account is not None:  # a fresh tenant's first report is always applied
        account = await pool.fetchrow(
            "SELECT current_balance, equity FROM trading_accounts WHERE id = $1",
            connection.account_id,
        )
        assert account is not None
        assert (account["current_balance"], account["equity"]) == (
            batch.account.balance,
            batch.account.equity,
        )


# --- MT5 -----------------------------------------------------------------------------------

MT5_DEAL = fixture_deals()[1]
MT5_ACCOUNT = {"currency": "USD", "balance": Decimal("1069.44"), "equity": Decimal("1071.00")}


@EXAMPLES
@given(
    deals=st.lists(mutated(MT5_DEAL), max_size=6),
    account=mutated(MT5_ACCOUNT),
    offset=st.just(10800) | ANY_JSON,
)
async def test_any_mt5_webhook_is_written_or_dead_lettered_with_its_reason(
    pool: asyncpg.Pool, vault: CredentialVault, deals: list[Any], account: Any, offset: Any
) -> None:
    login = unique_number()
    connection = await new_tenant(pool, vault, "mt5", str(login), "PosCal-Any")
    # Tickets of the tenant's own (tickets key fills), where the field survived mutation.
    for n, deal in enumerate(deals):
        if isinstance(deal, dict) and deal.get("ticket") == MT5_DEAL["ticket"]:
            deal["ticket"] = 1_000_000 + n
    if isinstance(account, dict):
        account = {"login": login, "server": "PosCal-Any"} | account
    body = json_as_sent({"account": account, "server_time_offset_seconds": offset, "deals": deals})
    outcome = await through_pipeline(pool, connection, body)

    def key_of(deal: Any) -> str | None:
        ticket = deal.get("ticket") if isinstance(deal, dict) else None
        return f"mt5:PosCal-Any:{login}:deal:{ticket}" if isinstance(ticket, int) else None

    await check_every_item_accounted_for(pool, connection, outcome, deals, key_of)
    check_mapped_as_sent(outcome, deals, key_of)


def check_mapped_as_sent(outcome: Outcome, deals: list[Any], key_of: Any) -> None:
    """Every deal mapped carries the exact numbers it was sent with."""
    if outcome.canonical is None:
        return
    sent: dict[str | None, list[dict[str, Any]]] = {}
    for deal in deals:
        if isinstance(deal, dict):
            sent.setdefault(key_of(deal), []).append(deal)
    money = ("volume", "price", "profit", "commission", "swap", "fee")
    for fill in outcome.canonical.fills:
        mapped = tuple(getattr(fill, field) for field in money)
        assert any(mapped == tuple(d[f] for f in money) for d in sent[fill.fill_key]), fill
    for movement in outcome.canonical.cash_movements:
        with localcontext(EXACT):
            totals = [
                d["profit"] + d["commission"] + d["swap"] + d["fee"]
                for d in sent[movement.movement_key]
            ]
        assert movement.amount in totals, movement


# --- OANDA ---------------------------------------------------------------------------------


def oanda_samples() -> list[dict[str, Any]]:
    page = json.loads((FIXTURES / "constructed" / "oanda_open_reduce_close_page.json").read_text())
    transactions: list[dict[str, Any]] = page["transactions"]
    return transactions


OANDA_TRANSACTIONS = oanda_samples()
OANDA_ACCOUNT = json.loads((FIXTURES / "oanda" / "account_summary.json").read_text())["account"]
MAPPED_TYPES = {"ORDER_FILL", "DAILY_FINANCING", "TRANSFER_FUNDS", "DIVIDEND_ADJUSTMENT"}


@EXAMPLES
@given(
    transactions=st.lists(st.sampled_from(OANDA_TRANSACTIONS).flatmap(mutated), max_size=6),
    account=st.none() | mutated(OANDA_ACCOUNT),
)
async def test_any_oanda_page_is_written_or_dead_lettered_with_its_reason(
    pool: asyncpg.Pool, vault: CredentialVault, transactions: list[Any], account: Any
) -> None:
    account_id = f"101-004-{unique_number()}-001"
    connection = await new_tenant(pool, vault, "oanda", account_id, "")
    for transaction in transactions:
        if isinstance(transaction, dict) and "accountID" in transaction:
            transaction["accountID"] = account_id
    if isinstance(account, dict) and "id" in account:
        account["id"] = account_id
    body = json_as_sent(
        {
            "kind": "oanda.transactions",
            "accountID": account_id,
            "environment": "practice",
            "from_id": "1",
            "to_id": "9",
            "lastTransactionID": "9",
            "transactions": transactions,
            "account": account,
            "openTrades": None,
        }
    )
    outcome = await through_pipeline(pool, connection, body)

    def key_of(transaction: Any) -> str | None:
        ref = transaction.get("id") if isinstance(transaction, dict) else None
        return f"oanda:{account_id}:txn:{ref}" if isinstance(ref, str) else None

    def skippable(transaction: Any) -> bool:
        kind = transaction.get("type") if isinstance(transaction, dict) else None
        return isinstance(kind, str) and kind not in MAPPED_TYPES

    await check_every_item_accounted_for(pool, connection, outcome, transactions, key_of, skippable)


# --- IBKR Flex -----------------------------------------------------------------------------

FLEX_EXECUTION = {
    "levelOfDetail": "EXECUTION",
    "symbol": "AAPL",
    "conid": "265598",
    "tradeID": "1",
    "dateTime": "20240603;100000",
    "quantity": "10",
    "buySell": "BUY",
    "openCloseIndicator": "O",
    "tradePrice": "190.50",
    "fifoPnlRealized": "0",
    "ibCommission": "-1.00",
}
ATTRIBUTE = st.text(max_size=30) | st.sampled_from(
    ["", "0", "-", "1e999999", "9" * 30, "BUY (Ca.)", "C;O", "Ca;Co", "20241345;256161"]
)


@st.composite
def flex_row(draw: st.DrawFn) -> dict[str, str]:
    row = dict(FLEX_EXECUTION)
    for name in draw(st.lists(st.sampled_from(sorted(row)), max_size=4, unique=True)):
        row[name] = draw(ATTRIBUTE)
    return row


@EXAMPLES
@given(rows=st.lists(flex_row(), max_size=6))
async def test_any_flex_statement_is_written_or_dead_lettered_with_its_reason(
    pool: asyncpg.Pool, vault: CredentialVault, rows: list[dict[str, str]]
) -> None:
    account = f"U{unique_number()}"
    connection = await new_tenant(pool, vault, "ibkr", account, "")
    for n, row in enumerate(rows):
        if row.get("tradeID") == "1":
            row["tradeID"] = str(100 + n)
    trades = "".join(
        "<Trade " + " ".join(f"{k}={quoteattr(v)}" for k, v in row.items()) + "/>" for row in rows
    )
    body = (
        f'<FlexQueryResponse><FlexStatements count="1"><FlexStatement accountId="{account}">'
        f"<Trades>{trades}</Trades></FlexStatement></FlexStatements></FlexQueryResponse>"
    ).encode("utf-8", "surrogatepass")
    outcome = await through_pipeline(pool, connection, body)

    def key_of(row: dict[str, str]) -> str | None:
        ref = row.get("tradeID", "").strip()
        return f"ibkr:{account}:exec:{ref}" if ref else None

    def skippable(row: dict[str, str]) -> bool:
        # Not an execution, or one that moves nothing, or a repeat: recorded as skipped.
        return (
            row.get("levelOfDetail") != "EXECUTION"
            or row.get("quantity", "").strip() in ("0", "-0", "0.0")
            or "AFx" in row.get("notes", "")
            or [r.get("tradeID") for r in rows].count(row.get("tradeID")) > 1
        )

    await check_every_item_accounted_for(pool, connection, outcome, rows, key_of, skippable)
