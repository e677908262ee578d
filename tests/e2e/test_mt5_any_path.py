"""Same account, any path: an MT5 account's deals by the Expert Advisor, MetaApi and a report,
overlapping and in any order, make the rows, keys and balance its webhooks alone make of them."""

from __future__ import annotations

import io
from collections.abc import Awaitable, Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import orjson
import pytest

from services.cli.import_report import PARTLY_IMPORTED, import_report
from services.cli.settings import CliSettings
from services.devstack.demo import encode_body, send_signed, wait_for_events
from services.devstack.stack import DevStack
from services.shared.connection_admin.credentials import set_broker_credentials
from services.shared.vault import CredentialVault
from tests.e2e.test_metaapi_to_journal import (  # noqa: F401 (the module's stack, shared)
    PASSWORD,
    balance,
    http,
    journal,
    keys,
    metaapi,
    provision,
    stack,
)
from tests.e2e.test_polling_to_journal import eventually
from tests.support.builders import SERVER, TestConnection
from tests.support.builders import new_connection as new_mt5_connection
from tests.support.fake_metaapi import FakeMetaApi, as_metaapi_deal
from tests.support.mt5_reports import HEDGING_HTML, ea_deals, report_of

pytestmark = pytest.mark.e2e

# The account's balance after its last deal, as every source reports it.
BALANCE = Decimal("10225.14")
# The server's clock (New York close): UTC+2 in January, UTC+3 in July and August.
WINTER, SUMMER = 7200, 10800
# Who sends what: the EA the winter deals and two summer ones, MetaApi the summer ones, the
# report all of them but the three no report can key (5012, 5013, 5015), which the others send.
EA_SUMMER = {5012, 5013}

Step = Callable[[TestConnection], Awaitable[None]]


def winter_deals() -> list[dict[str, Any]]:
    return list(ea_deals(HEDGING_HTML, "2024.01"))


def summer_deals() -> list[dict[str, Any]]:
    return [*ea_deals(HEDGING_HTML, "2024.07"), *ea_deals(HEDGING_HTML, "2024.08")]


async def webhooks(made: TestConnection, batches: list[tuple[list[dict[str, Any]], int]]) -> None:
    """The Expert Advisor's deliveries, each with the server's offset when it was sent."""
    async with httpx.AsyncClient(timeout=10) as client:
        for deals, offset in batches:
            document = {
                "account": {
                    "login": made.login,
                    "server": SERVER,
                    "currency": "USD",
                    "balance": BALANCE,
                    "equity": BALANCE,
                },
                "server_time_offset_seconds": offset,
                "deals": deals,
            }
            assert (
                await send_signed(client, made.created, encode_body(document))
            ).status_code == 202


async def mt5_account(
    pool: asyncpg.Pool, vault: CredentialVault, running: DevStack, fake: FakeMetaApi
) -> TestConnection:
    """A demo MT5 connection whose sign-in is stored and known at the fake broker."""
    async with pool.acquire() as conn:
        made = await new_mt5_connection(conn, vault, ingest_url=running.ingest_url)
        sign_in = {"login": str(made.login), "password": PASSWORD, "server": SERVER}
        await set_broker_credentials(
            conn, vault, made.created.connection_id, orjson.dumps(sign_in).decode()
        )
    fake.add_login(made.login, PASSWORD, server=SERVER).balance = BALANCE
    return made


# Each path first, second and last once, and each pair of paths in both orders.
ORDERS = [
    ("webhooks", "metaapi", "report"),
    ("metaapi", "report", "webhooks"),
    ("report", "webhooks", "metaapi"),
]


@pytest.mark.parametrize("order", ORDERS, ids=lambda order: " then ".join(order))
async def test_an_account_synced_through_every_path_in_any_order_has_one_set_of_rows(
    order: tuple[str, ...],
    pool: asyncpg.Pool,
    vault: CredentialVault,
    stack: DevStack,  # noqa: F811 (the fixture imported above)
    metaapi: FakeMetaApi,  # noqa: F811
    http: httpx.AsyncClient,  # noqa: F811
    caught_up: Callable[[], Awaitable[None]],
    database_url: str,
    kafka_bootstrap: str,
    tmp_path: Path,
) -> None:
    # What the journal must hold: every deal, by webhooks alone.
    expected = await mt5_account(pool, vault, stack, metaapi)
    await webhooks(expected, [(winter_deals(), WINTER), (summer_deals(), SUMMER)])

    async def by_webhooks(made: TestConnection) -> None:
        summer = [d for d in summer_deals() if d["ticket"] in EA_SUMMER]
        await webhooks(made, [(winter_deals(), WINTER), (summer, SUMMER)])
        async with pool.acquire() as conn:
            await wait_for_events(conn, made.created.connection_id, 2)

    async def by_metaapi(made: TestConnection) -> None:
        account_id = await provision(pool, vault, metaapi, http, made)
        metaapi.add_deals(account_id, [as_metaapi_deal(d, SUMMER) for d in summer_deals()])
        polled = {f"mt5:{SERVER}:{made.login}:deal:{d['ticket']}" for d in summer_deals()}

        async def all_polled() -> bool:  # by a sync after the deals were there
            return polled <= set(await keys(pool, made))

        await eventually(all_polled, "MetaApi's deals")

    async def by_report(made: TestConnection) -> None:
        report = tmp_path / f"ReportHistory-{made.login}.html"
        report.write_bytes(report_of(HEDGING_HTML, made.login, SERVER))
        settings = CliSettings(
            database_url=database_url, kafka_bootstrap_servers=kafka_bootstrap, topics=stack.topics
        )
        err = io.StringIO()
        status = await import_report(
            settings,
            connection_id=made.created.connection_id,
            path=report,
            clock_spec="new-york-close",
            margin_mode=None,
            out=io.StringIO(),
            err=err,
        )
        assert status == PARTLY_IMPORTED, err.getvalue()  # all but 5012, 5013 and 5015

    steps: dict[str, Step] = {"webhooks": by_webhooks, "metaapi": by_metaapi, "report": by_report}
    account = await mt5_account(pool, vault, stack, metaapi)
    for path in order:
        await steps[path](account)
        await caught_up()

    async with pool.acquire() as conn:
        await wait_for_events(conn, expected.created.connection_id, 2)
    await caught_up()
    prefix = f"mt5:{SERVER}:{account.login}"
    assert await keys(pool, account) == sorted(
        f"{prefix}:deal:{d['ticket']}" for d in [*winter_deals(), *summer_deals()]
    )
    rows = await journal(pool, account)
    assert rows == await journal(pool, expected)
    assert {row[0] for row in rows} >= {"7001", "7005", "7006", "7008", "7009", "7012"}
    assert await balance(pool, account) == await balance(pool, expected) == BALANCE
