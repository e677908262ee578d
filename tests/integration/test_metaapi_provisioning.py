"""Provisioning an MT5 connection's MetaApi terminal from the credentials in the vault, against
the fake MetaApi and the real Postgres: created (once per transaction id), deployed, waited for
with progress and a bound, checked, scheduled; the failures a wizard shows by code; deleting
the connection removes the terminal and destroys the credentials."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any, cast

import asyncpg
import httpx
import orjson
import pytest

from services.shared.brokers.http import RetryPolicy
from services.shared.brokers.mt5.metaapi.settings import MetaApiConfig
from services.shared.brokers.mt5.metaapi.terminals import MetaApiTerminals
from services.shared.brokers.provisioning import (
    ProvisioningError,
    ProvisioningRefused,
    ProvisioningUnavailable,
)
from services.shared.connection_admin.connections import ConnectionRefused
from services.shared.connection_admin.credentials import set_broker_credentials
from services.shared.connection_admin.deletion import DeletedConnection, delete_connection
from services.shared.connection_admin.terminals import (
    Progress,
    ProvisionedTerminal,
    ProvisioningLimits,
    TerminalServices,
    provision_connection,
)
from services.shared.credential_kinds import BROKER_CREDENTIALS
from services.shared.database import Connection
from services.shared.vault import CredentialVault
from tests.support.builders import SERVER, TestConnection, new_connection
from tests.support.fake_metaapi import REAL, TOKEN, FakeMetaApi
from tests.support.poll_adapters import VirtualTime

pytestmark = pytest.mark.integration
PASSWORD = "investor-Pa55"


@pytest.fixture(scope="module")
def served() -> Iterator[FakeMetaApi]:
    with FakeMetaApi() as fake:
        yield fake


@pytest.fixture
def metaapi(served: FakeMetaApi) -> FakeMetaApi:
    served.validation_reads = served.deploy_reads = served.connect_reads = 0
    served.broker_unreachable = False
    return served


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=10.0) as client:
        yield client


@pytest.fixture
def time() -> VirtualTime:
    return VirtualTime()


@pytest.fixture
def services(metaapi: FakeMetaApi, http: httpx.AsyncClient, time: VirtualTime) -> TerminalServices:
    config = MetaApiConfig(
        token=lambda: TOKEN, provisioning_url=metaapi.url, client_url=metaapi.url
    )
    terminals = MetaApiTerminals(
        http, config, retry=RetryPolicy(backoff_base_seconds=0.0), sleep=time
    )
    return lambda name: terminals if name == "mt5" else None


@pytest.fixture
async def connection(
    pool: asyncpg.Pool, vault: CredentialVault, metaapi: FakeMetaApi
) -> TestConnection:
    """A demo MT5 connection whose login, investor password and server are in the vault."""
    async with pool.acquire() as conn:
        made = await new_connection(conn, vault)
        await store_sign_in(conn, vault, made, PASSWORD)
    metaapi.add_login(made.login, PASSWORD, server=SERVER)
    return made


async def store_sign_in(
    conn: Connection, vault: CredentialVault, made: TestConnection, password: str
) -> None:
    text = orjson.dumps({"login": str(made.login), "password": password, "server": SERVER})
    await set_broker_credentials(conn, vault, made.created.connection_id, text.decode())


async def provision(
    pool: asyncpg.Pool,
    vault: CredentialVault,
    made: TestConnection,
    services: TerminalServices,
    time: VirtualTime,
    steps: list[Progress] | None = None,
    bound_seconds: float = 300,
) -> ProvisionedTerminal:
    async with pool.acquire() as conn:
        return await provision_connection(
            conn,
            vault,
            made.created.connection_id,
            services,
            limits=ProvisioningLimits(timeout_seconds=bound_seconds, poll_seconds=5),
            progress=(steps if steps is not None else []).append,
            sleep=time,
            monotonic=time.monotonic,
        )


async def terminal_row(pool: asyncpg.Pool, made: TestConnection) -> asyncpg.Record | None:
    return await pool.fetchrow(
        "SELECT * FROM cloud_terminals WHERE connection_id = $1", made.created.connection_id
    )


async def scheduled(pool: asyncpg.Pool, made: TestConnection) -> bool:
    found = await pool.fetchval(
        "SELECT next_sync_at <= now() FROM sync_schedule WHERE connection_id = $1",
        made.created.connection_id,
    )
    return bool(found)


async def test_a_slow_terminal_is_waited_for_with_progress_then_checked_and_scheduled(
    pool: asyncpg.Pool,
    vault: CredentialVault,
    metaapi: FakeMetaApi,
    services: TerminalServices,
    time: VirtualTime,
    connection: TestConnection,
) -> None:
    metaapi.validation_reads, metaapi.deploy_reads, metaapi.connect_reads = 1, 3, 2
    steps: list[Progress] = []
    before = len(metaapi.created_with)

    done = await provision(pool, vault, connection, services, time, steps)

    assert [s.step for s in steps] == [
        "creating",
        "validating",
        "deploying",
        "deploying",  # DEPLOYING, as the status reads say it
        "connecting",
        "checking",
        "ready",
    ]
    sent = metaapi.created_with[before:]
    assert len(sent) == 2  # asked again under the same transaction id after the 202
    assert sent[-1] | {"name": "-"} == {
        "name": "-",
        "type": "cloud-g2",
        "login": str(connection.login),
        "password": PASSWORD,
        "server": SERVER,
        "platform": "mt5",
        "magic": 0,
        "region": "new-york",
    }
    assert len([a for a in metaapi.accounts if a.login.login == str(connection.login)]) == 1
    assert done.account["login"] == str(connection.login)
    assert done.account["trade_mode"] == "ACCOUNT_TRADE_MODE_DEMO"
    row = await terminal_row(pool, connection)
    assert row is not None
    assert (row["remote_account_id"], row["state"], row["connection_status"]) == (
        done.terminal.account_id,
        "DEPLOYED",
        "CONNECTED",
    )
    assert row["ready_at"] == done.ready_at and row["last_error"] is None
    assert await scheduled(pool, connection)
    assert all(PASSWORD not in repr(s) for s in steps)


@pytest.mark.parametrize(
    ("password", "server", "code"),
    [
        ("wrong-password", SERVER, "wrong_login_or_password"),
        (PASSWORD, "NoSuchBroker-Demo", "server_not_found"),
    ],
)
async def test_a_sign_in_the_broker_refuses_is_a_refusal_the_user_can_act_on(
    pool: asyncpg.Pool,
    vault: CredentialVault,
    services: TerminalServices,
    time: VirtualTime,
    connection: TestConnection,
    password: str,
    server: str,
    code: str,
) -> None:
    text = orjson.dumps({"login": str(connection.login), "password": password, "server": server})
    async with pool.acquire() as conn:
        # The sign-in must name the connection's server: give the connection this one.
        await conn.execute(
            "UPDATE mt5_connections SET server = $2 WHERE id = $1",
            connection.created.connection_id,
            server,
        )
        await set_broker_credentials(conn, vault, connection.created.connection_id, text.decode())

    with pytest.raises(ProvisioningRefused) as refused:
        await provision(pool, vault, connection, services, time)

    assert refused.value.code == code
    assert password not in refused.value.message
    row = await terminal_row(pool, connection)
    assert row is not None and row["last_error"].startswith(code)
    assert not await scheduled(pool, connection)


async def test_a_broker_the_terminal_cannot_reach_ends_in_a_bounded_wait_and_says_so(
    pool: asyncpg.Pool,
    vault: CredentialVault,
    metaapi: FakeMetaApi,
    services: TerminalServices,
    time: VirtualTime,
    connection: TestConnection,
) -> None:
    metaapi.broker_unreachable = True
    with pytest.raises(ProvisioningUnavailable) as waited:
        await provision(pool, vault, connection, services, time, bound_seconds=60)
    assert waited.value.code == "broker_unreachable"
    assert SERVER in waited.value.message
    assert 55 <= sum(time.delays) <= 60  # waited no longer than the bound
    assert not await scheduled(pool, connection)


async def test_a_run_that_timed_out_carries_on_where_it_was_without_a_second_terminal(
    pool: asyncpg.Pool,
    vault: CredentialVault,
    metaapi: FakeMetaApi,
    services: TerminalServices,
    time: VirtualTime,
    connection: TestConnection,
) -> None:
    metaapi.deploy_reads = 20
    with pytest.raises(ProvisioningUnavailable) as waited:
        await provision(pool, vault, connection, services, time, bound_seconds=30)
    assert waited.value.code == "timed_out"
    metaapi.deploy_reads = 0

    done = await provision(pool, vault, connection, services, time)

    mine = [a for a in metaapi.accounts if a.login.login == str(connection.login)]
    assert [a.id for a in mine] == [done.terminal.account_id]
    assert await scheduled(pool, connection)


async def test_an_account_of_the_other_trade_mode_is_refused_for_its_connection(
    pool: asyncpg.Pool,
    vault: CredentialVault,
    metaapi: FakeMetaApi,
    services: TerminalServices,
    time: VirtualTime,
    connection: TestConnection,
) -> None:
    metaapi.add_login(connection.login, PASSWORD, server=SERVER, trade_mode=REAL)
    with pytest.raises(ProvisioningRefused) as refused:
        await provision(pool, vault, connection, services, time)
    assert refused.value.code == "trade_mode_mismatch"
    assert "real-money account" in refused.value.message
    assert "live connection" in refused.value.message
    assert not await scheduled(pool, connection)


async def test_new_credentials_replace_the_terminal_made_with_the_old_ones(
    pool: asyncpg.Pool,
    vault: CredentialVault,
    metaapi: FakeMetaApi,
    services: TerminalServices,
    time: VirtualTime,
    connection: TestConnection,
) -> None:
    first = await provision(pool, vault, connection, services, time)
    metaapi.add_login(connection.login, "changed-Pa55", server=SERVER)
    async with pool.acquire() as conn:
        await store_sign_in(conn, vault, connection, "changed-Pa55")

    second = await provision(pool, vault, connection, services, time)

    assert metaapi.account(first.terminal.account_id) is None
    assert metaapi.account(second.terminal.account_id) is not None
    assert metaapi.created_with[-1]["password"] == "changed-Pa55"


async def test_without_stored_credentials_nothing_is_asked_of_metaapi(
    pool: asyncpg.Pool,
    vault: CredentialVault,
    metaapi: FakeMetaApi,
    services: TerminalServices,
    time: VirtualTime,
) -> None:
    async with pool.acquire() as conn:
        bare = await new_connection(conn, vault)
    asked = metaapi.requests.count()
    with pytest.raises(ConnectionRefused, match="set-credentials"):
        await provision(pool, vault, bare, services, time)
    assert metaapi.requests.count() == asked


async def test_deleting_the_connection_removes_its_terminal_and_destroys_its_credentials(
    pool: asyncpg.Pool,
    vault: CredentialVault,
    metaapi: FakeMetaApi,
    services: TerminalServices,
    time: VirtualTime,
    connection: TestConnection,
) -> None:
    done = await provision(pool, vault, connection, services, time)
    connection_id = connection.created.connection_id

    async with pool.acquire() as conn:
        deleted = await delete_connection(conn, connection_id, services)

    assert deleted.removed_terminal == done.terminal.account_id
    assert deleted.credentials_destroyed >= 2  # the sign-in and the webhook secret
    assert metaapi.account(done.terminal.account_id) is None
    for table, column in (
        ("mt5_credentials", "connection_id"),
        ("cloud_terminals", "connection_id"),
        ("sync_schedule", "connection_id"),
        ("mt5_connections", "id"),
    ):
        count = await pool.fetchval(
            f"SELECT count(*) FROM {table} WHERE {column} = $1",  # noqa: S608
            connection_id,
        )
        assert count == 0, table


async def test_a_terminal_metaapi_cannot_remove_now_keeps_the_connection_unpolled_until_retried(
    pool: asyncpg.Pool,
    vault: CredentialVault,
    metaapi: FakeMetaApi,
    services: TerminalServices,
    time: VirtualTime,
    connection: TestConnection,
) -> None:
    done = await provision(pool, vault, connection, services, time)
    connection_id = connection.created.connection_id
    metaapi.fail_next(5, 500, path_suffix="/undeploy")

    async with pool.acquire() as conn:
        with pytest.raises(ProvisioningError) as failed:
            await delete_connection(conn, connection_id, services)
    assert failed.value.code == "service_unavailable"
    row = await terminal_row(pool, connection)
    assert row is not None and row["removing_at"] is not None  # never leased meanwhile
    assert await pool.fetchval(
        "SELECT count(*) FROM mt5_credentials WHERE connection_id = $1 AND kind = $2",
        connection_id,
        BROKER_CREDENTIALS,
    )

    async with pool.acquire() as conn:
        await delete_connection(conn, connection_id, services)
    assert metaapi.account(done.terminal.account_id) is None
    assert await terminal_row(pool, connection) is None


async def test_a_connection_with_a_terminal_cannot_be_deleted_behind_the_services_back(
    pool: asyncpg.Pool,
    vault: CredentialVault,
    services: TerminalServices,
    time: VirtualTime,
    connection: TestConnection,
) -> None:
    await provision(pool, vault, connection, services, time)
    with pytest.raises(asyncpg.ForeignKeyViolationError):
        await pool.execute(
            "DELETE FROM mt5_connections WHERE id = $1", connection.created.connection_id
        )


class _ReadsTheTerminalRowTogether:
    """A connection whose read of the terminal row returns only once `barrier` is passed: two
    provisioning runs that each read the row before either writes it (a wizard's double click,
    two operators), as can happen by chance."""

    def __init__(self, conn: Connection, barrier: asyncio.Barrier) -> None:
        self._conn = conn
        self._barrier: asyncio.Barrier | None = barrier

    async def fetchrow(self, query: str, *args: object) -> asyncpg.Record | None:
        found = await self._conn.fetchrow(query, *args)
        if query.startswith("SELECT * FROM cloud_terminals") and self._barrier is not None:
            barrier, self._barrier = self._barrier, None  # the run's first read only
            await asyncio.wait_for(barrier.wait(), 30)
        return found

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)


async def test_two_runs_at_once_make_one_terminal_not_a_second_one_nobody_knows_of(
    pool: asyncpg.Pool,
    vault: CredentialVault,
    metaapi: FakeMetaApi,
    services: TerminalServices,
    time: VirtualTime,
    connection: TestConnection,
) -> None:
    barrier = asyncio.Barrier(2)

    async def run() -> ProvisionedTerminal:
        async with pool.acquire() as conn:
            return await provision_connection(
                cast(Connection, _ReadsTheTerminalRowTogether(conn, barrier)),
                vault,
                connection.created.connection_id,
                services,
                sleep=time,
                monotonic=time.monotonic,
            )

    first, second = await asyncio.gather(run(), run())

    mine = [a.id for a in metaapi.accounts if a.login.login == str(connection.login)]
    assert mine == [first.terminal.account_id] == [second.terminal.account_id]
    row = await terminal_row(pool, connection)
    assert row is not None and row["remote_account_id"] == first.terminal.account_id


async def test_a_connection_deleted_while_its_terminal_is_being_created_leaves_no_terminal(
    pool: asyncpg.Pool,
    vault: CredentialVault,
    metaapi: FakeMetaApi,
    services: TerminalServices,
    time: VirtualTime,
    connection: TestConnection,
) -> None:
    metaapi.validation_reads = 1  # MetaApi checks the sign-in: "ask again" (202)
    connection_id = connection.created.connection_id
    deleted: list[DeletedConnection] = []

    async def deleted_meanwhile(seconds: float) -> None:
        # While the run waits to ask again, the user deletes the connection: nothing of the
        # terminal is known yet, so there is nothing to remove.
        if not deleted:
            async with pool.acquire() as conn:
                deleted.append(await delete_connection(conn, connection_id, services))
        await time(seconds)

    with pytest.raises(ConnectionRefused, match="deleted"):
        async with pool.acquire() as conn:
            await provision_connection(
                conn, vault, connection_id, services, sleep=deleted_meanwhile
            )

    assert deleted and deleted[0].removed_terminal is None
    assert [a for a in metaapi.accounts if a.login.login == str(connection.login)] == []
    assert await terminal_row(pool, connection) is None


async def test_new_credentials_while_a_terminal_is_being_created_leave_only_the_new_terminal(
    pool: asyncpg.Pool,
    vault: CredentialVault,
    metaapi: FakeMetaApi,
    services: TerminalServices,
    time: VirtualTime,
    connection: TestConnection,
) -> None:
    metaapi.validation_reads = 1  # the first run waits to ask again (202)
    connection_id = connection.created.connection_id
    replaced: list[ProvisionedTerminal] = []

    async def replaced_meanwhile(seconds: float) -> None:
        # While the first run waits, the user enters the sign-in again (new credentials, the
        # same password) and provisions again.
        if not replaced:
            async with pool.acquire() as conn:
                await store_sign_in(conn, vault, connection, PASSWORD)
            replaced.append(await provision(pool, vault, connection, services, time))
        await time(seconds)

    with pytest.raises(ConnectionRefused, match="meanwhile"):
        async with pool.acquire() as conn:
            await provision_connection(
                conn, vault, connection_id, services, sleep=replaced_meanwhile
            )

    mine = [a.id for a in metaapi.accounts if a.login.login == str(connection.login)]
    assert mine == [replaced[0].terminal.account_id]
    row = await terminal_row(pool, connection)
    assert row is not None and row["remote_account_id"] == replaced[0].terminal.account_id
