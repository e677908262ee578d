"""The OANDA adapter's pure core: id windows, cursors, tokens, hosts, the page it hands over, and
the size budget that keeps a page (as a raw event, even dead-lettered) under Kafka's limits."""

from __future__ import annotations

import itertools
import json
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from services.shared.brokers.errors import CredentialsRejected
from services.shared.brokers.ibkr import adapter as ibkr_adapter
from services.shared.brokers.oanda.adapter import (
    LIVE_URL,
    MAX_PAGE_BYTES,
    PRACTICE_URL,
    IdWindow,
    base_url,
    delivery_id,
    fitted_pages,
    id_windows,
    page_body,
    read_cursor,
    read_token,
)
from services.shared.dead_letters import MAX_DEAD_LETTER_BYTES, dead_letter
from services.shared.envelope import RawEvent
from services.shared.kafka import MAX_MESSAGE_BYTES, create_producer
from tests.support.builders import PINNED_CONNECTION
from tests.support.records import consumer_record


def test_a_never_synced_account_is_read_from_id_1_in_windows_of_at_most_1000() -> None:
    assert id_windows(read_cursor(None), 2500) == [
        IdWindow(1, 1000),
        IdWindow(1001, 2000),
        IdWindow(2001, 2500),
    ]


def test_windows_start_right_after_the_cursor() -> None:
    assert id_windows(2123, 2125) == [IdWindow(2124, 2125)]
    assert id_windows(999, 1000) == [IdWindow(1000, 1000)]


def test_nothing_after_the_cursor_is_no_window() -> None:
    assert id_windows(2123, 2123) == []


def test_a_window_never_exceeds_what_idrange_accepts() -> None:
    with pytest.raises(ValueError, match="1 to 1000"):
        id_windows(0, 5000, size=1001)


@pytest.mark.parametrize("cursor", ["", "12a", "-3", "1.5", " 7"])
def test_a_cursor_that_is_not_a_transaction_id_is_refused(cursor: str) -> None:
    with pytest.raises(ValueError, match="transaction id"):
        read_cursor(cursor)


def test_the_token_is_the_stored_text_without_surrounding_whitespace() -> None:
    assert read_token(b"  abc123-def456\n") == "abc123-def456"


@pytest.mark.parametrize("stored", [b"", b"   ", b"two words", b"\xff\xfe-secret-bytes"])
def test_stored_bytes_that_are_no_token_are_rejected_without_quoting_them(stored: bytes) -> None:
    with pytest.raises(CredentialsRejected) as caught:
        read_token(stored)
    assert caught.value.status_code == 0
    assert "words" not in str(caught.value) and "secret" not in str(caught.value)


def test_demo_connections_use_the_practice_host_and_live_ones_fxtrade() -> None:
    assert base_url("demo", None) == PRACTICE_URL == "https://api-fxpractice.oanda.com"
    assert base_url("live", None) == LIVE_URL == "https://api-fxtrade.oanda.com"


def test_a_per_connection_api_url_overrides_the_host() -> None:
    assert base_url("live", "http://127.0.0.1:8080/") == "http://127.0.0.1:8080"


def test_the_delivery_id_names_the_account_and_the_window() -> None:
    assert (
        delivery_id("101-004-1435156-001", IdWindow(1001, 2000))
        == "oanda:101-004-1435156-001:txn:1001-2000"
    )


def test_the_page_keeps_oanda_values_exactly_as_oanda_wrote_them() -> None:
    transaction = {"id": "7", "units": "-100", "price": "1.09289", "userID": 1435156}
    account = {"balance": "35454.4740", "marginRate": Decimal("0.050"), "openTradeCount": 2}
    body = page_body(
        account_id="101-004-1435156-001",
        environment="practice",
        window=IdWindow(7, 7),
        last_transaction_id="7",
        transactions=[transaction],
        account=account,
        open_trades=[],
    )
    assert b'"marginRate":0.050' in body  # a JSON number stays the same digits, not a float
    page = json.loads(body, parse_float=Decimal)
    assert list(page) == [
        "kind",
        "accountID",
        "environment",
        "from_id",
        "to_id",
        "lastTransactionID",
        "transactions",
        "account",
        "openTrades",
    ]
    assert page["kind"] == "oanda.transactions"
    assert (page["from_id"], page["to_id"], page["lastTransactionID"]) == ("7", "7", "7")
    assert page["transactions"] == [transaction]
    assert page["account"]["balance"] == "35454.4740"


def test_pages_before_the_last_carry_no_account_or_open_trades() -> None:
    body = page_body(
        account_id="a",
        environment="live",
        window=IdWindow(1, 1000),
        last_transaction_id="2500",
        transactions=[],
        account=None,
        open_trades=None,
    )
    page = json.loads(body)
    assert page["environment"] == "live"
    assert page["account"] is None and page["openTrades"] is None


def numbered(first: int, last: int, filler: int = 100) -> list[dict[str, Any]]:
    return [
        {"id": str(n), "type": "ORDER_FILL", "note": "x" * filler} for n in range(first, last + 1)
    ]


def render(window: IdWindow, transactions: list[Any], last: bool) -> bytes:
    return page_body(
        account_id="a",
        environment="live",
        window=window,
        last_transaction_id="1000",
        transactions=transactions,
        account={"id": "a"} if last else None,
        open_trades=[] if last else None,
    )


def test_a_window_whose_page_fits_the_budget_is_one_page() -> None:
    window = IdWindow(1, 1000)
    [(piece, body)] = fitted_pages(window, numbered(1, 1000), render, 1_000_000, last=True)
    assert piece == window
    assert body == render(window, numbered(1, 1000), True)


def test_a_window_over_the_budget_is_halved_until_each_page_fits() -> None:
    budget = 30_000  # ~125 bytes a transaction: 1000 of them are ~125 KB, 250 ~31 KB
    pages = list(fitted_pages(IdWindow(1, 1000), numbered(1, 1000), render, budget, last=True))

    assert [piece for piece, _ in pages] == [
        IdWindow(1, 125),
        IdWindow(126, 250),
        IdWindow(251, 375),
        IdWindow(376, 500),
        IdWindow(501, 625),
        IdWindow(626, 750),
        IdWindow(751, 875),
        IdWindow(876, 1000),
    ]
    assert all(len(body) <= budget for _, body in pages)
    read = [json.loads(body) for _, body in pages]
    assert [t for page in read for t in page["transactions"]] == numbered(1, 1000)
    assert [page["account"] is not None for page in read] == [False] * 7 + [True]


def test_halves_of_a_window_that_is_not_the_poll_s_last_carry_no_account() -> None:
    pages = fitted_pages(IdWindow(1, 100), numbered(1, 100), render, 8_000, last=False)
    assert all(json.loads(body)["account"] is None for _, body in pages)


def test_a_single_transaction_over_the_budget_is_still_handed_over_alone() -> None:
    [(piece, body)] = fitted_pages(IdWindow(7, 7), numbered(7, 7, 5000), render, 1000, last=True)
    assert piece == IdWindow(7, 7) and len(body) > 1000


def test_ids_missing_from_a_window_leave_its_halves_where_they_are() -> None:
    sparse = [t for t in numbered(1, 100) if int(t["id"]) % 3 == 0]
    pages = list(fitted_pages(IdWindow(1, 100), sparse, render, 3_000, last=True))
    assert pages[0][0].first == 1 and pages[-1][0].last == 100
    assert all(a.last + 1 == b.first for (a, _), (b, _) in itertools.pairwise(pages))


@pytest.mark.parametrize("budget", [MAX_PAGE_BYTES, ibkr_adapter.MAX_PAGE_BYTES])
async def test_a_page_at_the_budget_fits_kafka_as_a_raw_event_and_as_its_dead_letter(
    budget: int,
) -> None:
    event = RawEvent.wrap(
        source="poller",
        connection=PINNED_CONNECTION,
        received_at=datetime(2026, 3, 2, tzinfo=UTC),
        delivery_id="oanda:101-004-1435156-001:txn:1-1000",
        body=b"{" + b"7" * (budget - 2) + b"}",
    )
    value = event.model_dump_json().encode()
    letter = dead_letter(
        consumer_record(
            value,
            topic="poscal.raw.v1",
            partition=11,
            offset=2**40,
            key=str(PINNED_CONNECTION.connection_id).encode(),
        ),
        stage="normalizer",
        reason_code="invalid_payload",
        reason="x" * 4000,
        failed_at=datetime(2026, 3, 2, tzinfo=UTC),
        event_id=str(event.event_id),
    )

    assert len(value) < 1024 * 1024 <= MAX_MESSAGE_BYTES  # under even Kafka's default limit
    assert len(letter.model_dump_json().encode()) <= MAX_DEAD_LETTER_BYTES  # sent whole
    producer = create_producer("127.0.0.1:9", "size-check")
    try:
        assert producer._max_request_size == MAX_MESSAGE_BYTES  # not aiokafka's 1 MiB default
    finally:
        await producer.stop()
