"""A report's Deals rows become the same fills and cash movements, under the same keys, as the
Expert Advisor's webhooks of those deals; rows the journal cannot take are refused with their
row before anything is published; chunks stay far under the topic's message size and keep
their delivery ids from one import to the next."""

from __future__ import annotations

import calendar
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import orjson
import pytest

from services.shared.brokers.mt5 import BROKER
from services.shared.brokers.mt5.report import (
    KIND,
    MAX_CHUNK_BYTES,
    check_rows,
    report_payloads,
)
from services.shared.brokers.mt5.report_deals import DealRow, ReportDeals, report_deals
from services.shared.brokers.mt5.report_file import read_report
from services.shared.brokers.mt5.server_clock import server_clock
from services.shared.canonical import CanonicalBatch, CashMovement, Fill
from services.shared.envelope import ConnectionRef, RawEvent
from services.shared.errors import InvalidEvent
from tests.support.builders import PINNED_CONNECTION
from tests.support.mt5_reports import HEDGING_HTML as HEDGING
from tests.support.mt5_reports import HEDGING_LOGIN, HEDGING_SERVER, ea_deals

LOGIN, SERVER = HEDGING_LOGIN, HEDGING_SERVER
PREFIX = f"mt5:{SERVER}:{LOGIN}"
CONNECTION = PINNED_CONNECTION.model_copy(update={"account_number": str(LOGIN), "server": SERVER})
CLOCK = server_clock("new-york-close")
IMPORTED_AT = datetime(2024, 8, 2, 8, 0, tzinfo=UTC)
map_event = BROKER.map  # as the normalizer maps an MT5 event: by its payload's kind
# What the journal gets (and what the Kafka default of 1 MiB allows a message).
KAFKA_DEFAULT_MESSAGE_BYTES = 1024 * 1024


def hedging() -> ReportDeals:
    return report_deals(read_report(HEDGING.read_bytes()))


def events(deals: ReportDeals, rows: tuple[DealRow, ...] | None = None) -> list[RawEvent]:
    chosen = check_rows(deals, CLOCK, IMPORTED_AT).accepted if rows is None else rows
    return [
        RawEvent.wrap(
            source="import",
            connection=CONNECTION,
            received_at=IMPORTED_AT,
            delivery_id=delivery_id,
            body=body,
        )
        for delivery_id, body in report_payloads(
            deals, chosen, server=SERVER, clock=CLOCK, file=HEDGING.name
        )
    ]


def test_the_reports_deals_become_fills_and_cash_keyed_by_server_login_and_ticket() -> None:
    [event] = events(hedging())
    mapped = map_event(event)
    assert mapped.rejected == ()
    fills = {f.broker_ref: f for f in mapped.batch.fills}
    assert sorted(fills) == sorted(
        ["5002", "5003", "5004", "5005", "5006", "5007", "5008", "5009", "5010", "5011", "5014"]
    )
    close = fills["5004"]
    assert (close.fill_key, close.position_key) == (f"{PREFIX}:deal:5004", f"{PREFIX}:7001")
    assert (close.side, close.entry, close.volume, close.price) == (
        "sell",
        "out",
        Decimal("0.2"),
        Decimal("1.09862"),
    )
    assert (close.profit, close.commission, close.swap) == (
        Decimal("70.00"),
        Decimal("-1.40"),
        Decimal("-1.86"),
    )
    assert close.executed_at == datetime(2024, 1, 11, 14, 45, 3, tzinfo=UTC)  # UTC+2 in winter
    assert fills["5006"].price == Decimal("2031.55")
    assert fills["5006"].executed_at == datetime(2024, 7, 15, 7, 0, tzinfo=UTC)  # UTC+3
    assert (fills["5008"].entry, fills["5008"].position_key) == ("out_by", f"{PREFIX}:7005")
    cash = {c.broker_ref: c for c in mapped.batch.cash_movements}
    assert {k: (c.kind, c.amount) for k, c in cash.items()} == {
        "5001": ("balance", Decimal("10000.00")),
        "5016": ("commission", Decimal("-3.40")),
        "5017": ("credit", Decimal("500.00")),
    }
    assert cash["5001"].movement_key == f"{PREFIX}:deal:5001"


def test_the_balance_after_the_last_deal_is_the_accounts_as_of_that_deal() -> None:
    [event] = events(hedging())
    snapshot = map_event(event).batch.account
    assert snapshot is not None
    assert (snapshot.balance, snapshot.currency, snapshot.equity) == (
        Decimal("10225.14"),
        "USD",
        None,
    )
    assert snapshot.as_of == snapshot.deals_through == datetime(2024, 7, 31, 21, 0, 5, tzinfo=UTC)


def webhook_body(deals: list[dict[str, Any]], offset: int) -> dict[str, Any]:
    account = {"login": LOGIN, "server": SERVER, "currency": "USD"}
    balance = {"balance": Decimal("10225.14"), "equity": Decimal("10225.14")}
    return {"account": account | balance, "server_time_offset_seconds": offset, "deals": deals}


def webhook(body: dict[str, Any]) -> RawEvent:
    return RawEvent.wrap(
        source="webhook",
        connection=CONNECTION,
        received_at=IMPORTED_AT,
        delivery_id="msg_ea",
        body=orjson.dumps(body, default=str),
    )


def records(batch: CanonicalBatch) -> list[Fill | CashMovement]:
    return [*batch.fills, *batch.cash_movements]


def test_a_deal_the_ea_sent_maps_to_exactly_the_fill_the_report_makes_of_it() -> None:
    wall = datetime(2024, 1, 11, 16, 45, 3)
    seconds = calendar.timegm(wall.timetuple())
    deal = {
        "ticket": 5004,
        "order": 7003,
        "time": seconds,
        "time_msc": seconds * 1000,
        "type": 1,
        "entry": 1,
        "magic": 0,
        "position_id": 7001,
        "reason": 4,
        "volume": Decimal("0.2"),
        "price": Decimal("1.09862"),
        "commission": Decimal("-1.40"),
        "swap": Decimal("-1.86"),
        "profit": Decimal("70.00"),
        "fee": Decimal("0.00"),
        "symbol": "EURUSD",
        "comment": "[tp 1.09862]",
        "external_id": "",
    }
    [from_ea] = map_event(webhook(webhook_body([deal], 7200))).batch.fills
    [from_report] = [
        f for f in map_event(events(hedging())[0]).batch.fills if f.broker_ref == "5004"
    ]
    assert from_report == from_ea


def test_every_deal_the_ea_sent_maps_to_exactly_the_fill_or_movement_the_report_makes() -> None:
    # The server's offset when the EA sent them: UTC+2 in January, UTC+3 in July and August.
    winter = list(ea_deals(HEDGING, "2024.01"))
    summer = [d for d in ea_deals(HEDGING) if d not in winter]
    from_ea: dict[str, Fill | CashMovement] = {}
    for deals, offset in ((winter, 7200), (summer, 10800)):
        batch = map_event(webhook(webhook_body(deals, offset))).batch
        from_ea |= {r.broker_ref: r for r in records(batch)}
    batch = map_event(events(hedging())[0]).batch
    from_report = {r.broker_ref: r for r in records(batch)}
    assert len(from_report) == 14 and len(from_ea) == 17
    assert {ref: from_ea[ref] for ref in from_report} == from_report


def test_rows_the_journal_cannot_take_are_refused_with_their_row_and_the_rest_go_on() -> None:
    checked = check_rows(hedging(), CLOCK, IMPORTED_AT)
    assert [(r.row, r.deal, r.code) for r in checked.refused] == [
        (46, "5012", "position_unknown"),
        (47, "5013", "position_unknown"),
        (49, "5015", "position_unknown"),
    ]
    assert "closed alike" in checked.refused[0].detail
    assert len(checked.accepted) == 14


def test_a_row_that_does_not_read_is_refused_with_what_is_wrong_in_it() -> None:
    text = HEDGING.read_bytes().decode("utf-16")
    text = text.replace("2024.01.10 14:02:11", "2024.13.10 14:02:11")  # deal 5003
    text = text.replace("<td nowrap>credit</td>", "<td nowrap>transfer</td>")  # deal 5017
    text = text.replace(
        "<td nowrap>5014</td><td nowrap>USDJPY", "<td nowrap>x5014</td><td nowrap>USDJPY"
    )
    checked = check_rows(report_deals(read_report(text.encode("utf-16"))), CLOCK, IMPORTED_AT)
    refused = {r.row: (r.deal, r.code, r.detail) for r in checked.refused}
    assert refused[37] == (
        "5003",
        "invalid_deal",
        "'2024.13.10 14:02:11' is not a time in the form YYYY.MM.DD HH:MM:SS",
    )
    # Without that close, the other part no longer adds up to its position: said, not guessed.
    assert refused[38][:2] == ("5004", "position_unknown")
    assert refused[48] == ("x5014", "invalid_deal", "deal 'x5014' is not a ticket number")
    assert refused[51] == ("5017", "unknown_deal_type", "deal type 'transfer' is not known")
    assert {d.cells["deal"] for d in checked.accepted} >= {"5001", "5002", "5016"}


def test_a_time_the_servers_clock_skips_is_refused_for_that_row_only() -> None:
    text = (
        HEDGING.read_bytes().decode("utf-16").replace("2024.07.31 23:59:59", "2024.03.10 09:30:00")
    )
    checked = check_rows(report_deals(read_report(text.encode("utf-16"))), CLOCK, IMPORTED_AT)
    assert [(r.deal, r.code) for r in checked.refused if r.deal == "5016"] == [
        ("5016", "ambiguous_time")
    ]


def test_a_report_of_another_account_than_the_connections_is_refused_whole() -> None:
    [event] = events(hedging())
    other = event.model_copy(
        update={"connection": CONNECTION.model_copy(update={"account_number": "61234999"})}
    )
    with pytest.raises(InvalidEvent, match="login 61234567") as refused:
        map_event(other)
    assert refused.value.code == "account_mismatch"


def many_deals(count: int) -> ReportDeals:
    account = hedging().account
    rows = []
    for n in range(count):
        cells = {
            "time": f"2024.07.{1 + n // 1000:02d} {n // 60 % 24:02d}:{n % 60:02d}:00",
            "deal": str(100000 + n),
            "symbol": "EURUSD",
            "type": "buy" if n % 2 == 0 else "sell",
            "direction": "in" if n % 2 == 0 else "out",
            "volume": "0.01",
            "price": "1.08950",
            "order": str(200000 + n),
            "commission": "-0.07",
            "fee": "0.00",
            "swap": "0.00",
            "profit": "0.00" if n % 2 == 0 else "1.20",
            "balance": f"{10000 + n:.2f}",
            "comment": "grid " + "x" * 26,  # MT5 keeps 31 characters of a comment
        }
        rows.append(DealRow(row=n + 30, cells=cells, position=300000 + n // 2))
    return ReportDeals(account, tuple(rows))


def test_a_long_history_is_chunked_far_under_the_topics_message_size_in_the_reports_order() -> None:
    deals = many_deals(5000)
    chunks = events(deals, deals.deals)
    assert len(chunks) > 5
    mapped_tickets = []
    for event in chunks:
        assert len(event.body) <= MAX_CHUNK_BYTES
        assert len(event.model_dump_json()) < KAFKA_DEFAULT_MESSAGE_BYTES
        mapped = map_event(event)
        assert mapped.rejected == ()
        assert len(mapped.batch.model_dump_json()) < KAFKA_DEFAULT_MESSAGE_BYTES
        mapped_tickets += [f.broker_ref for f in mapped.batch.fills]
    assert mapped_tickets == [row.cells["deal"] for row in deals.deals]
    # Only the last chunk says what the balance is after the last deal.
    assert [orjson.loads(e.body)["balance"] is not None for e in chunks] == [False] * (
        len(chunks) - 1
    ) + [True]


def test_delivery_ids_come_from_the_account_and_the_tickets_so_an_import_again_is_the_same() -> (
    None
):
    deals = many_deals(1200)
    first, again = events(deals, deals.deals), events(deals, deals.deals)
    assert [e.delivery_id for e in first] == [e.delivery_id for e in again]
    assert [e.event_id for e in first] == [e.event_id for e in again]
    assert len({e.delivery_id for e in first}) == len(first)
    assert all(e.delivery_id.startswith(f"mt5-report-{LOGIN}-") for e in first)
    # Another connection's import of the same file is other events.
    other = ConnectionRef(
        **(CONNECTION.model_dump() | {"connection_id": PINNED_CONNECTION.user_id})
    )
    assert derive_ids(first, other) != [e.event_id for e in first]


def derive_ids(chunks: list[RawEvent], connection: ConnectionRef) -> list[Any]:
    return [
        RawEvent.wrap(
            source="import",
            connection=connection,
            received_at=IMPORTED_AT,
            delivery_id=e.delivery_id,
            body=e.body,
        ).event_id
        for e in chunks
    ]


def test_a_payload_names_its_kind_and_its_clock() -> None:
    [event] = events(hedging())
    document = orjson.loads(event.body)
    assert (document["kind"], document["clock"], document["file"]) == (
        KIND,
        "new-york-close",
        HEDGING.name,
    )
    assert isinstance(map_event(event).batch.fills[0], Fill)
