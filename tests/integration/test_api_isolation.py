"""Every endpoint tried across two users: a user only ever sees and changes their own
connections, another user's is answered exactly as one that does not exist, and it is row-level
security that decides (a query with no WHERE at all still sees only the caller's rows), while a
privileged step checks ownership before it runs anything as the service."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import pytest

from services.api.errors import NotFound
from services.api.routes import OPERATIONS
from services.api.tokens import Caller
from services.shared.database import create_pool
from services.shared.vault import CredentialVault
from tests.support.api import RunningApi, api_settings, bearer, hs256, running_api
from tests.support.builders import connect_broker_account, new_connection

pytestmark = pytest.mark.integration


@dataclass(frozen=True)
class User:
    user_id: uuid.UUID
    connections: tuple[uuid.UUID, ...]

    @property
    def headers(self) -> dict[str, str]:
        return bearer(hs256(self.user_id))


async def _user_with_two_connections(pool: asyncpg.Pool, vault: CredentialVault) -> User:
    async with pool.acquire() as conn:
        mt5 = await new_connection(conn, vault)
        oanda = await connect_broker_account(
            conn, vault, mt5.user_id, "oanda", f"101-004-{uuid.uuid4().int % 10**7}-001"
        )
    return User(mt5.user_id, (mt5.created.connection_id, oanda.connection_id))


@pytest.fixture
async def alice(pool: asyncpg.Pool, vault: CredentialVault) -> User:
    return await _user_with_two_connections(pool, vault)


@pytest.fixture
async def bob(pool: asyncpg.Pool, vault: CredentialVault) -> User:
    return await _user_with_two_connections(pool, vault)


@pytest.fixture
async def api(pool: asyncpg.Pool, database_url: str, master_key: str) -> AsyncIterator[RunningApi]:
    async with running_api(api_settings(database_url, master_key=master_key), pool) as running:
        yield running


# A valid body of each operation that takes one (an Expert Advisor's session: no broker asked).
_BODIES = {
    "startWizardSession": {
        "broker": "mt5",
        "connection_type": "demo",
        "sync": "webhook",
        "credentials": {"login": "4242", "server": "PosCal-Test"},
    },
    "confirmWizardSession": {"account_number": "4242", "account_label": "Alice was here"},
}


def _same_answer(a: httpx.Response, b: httpx.Response) -> None:
    assert (a.status_code, a.content, dict(a.headers)) == (
        b.status_code,
        b.content,
        dict(b.headers),
    )


async def test_the_list_holds_exactly_the_caller_s_connections(
    api: RunningApi, alice: User, bob: User
) -> None:
    for user in (alice, bob):
        response = await api.client.get("/v1/connections", headers=user.headers)
        assert response.status_code == 200
        assert [c["id"] for c in response.json()["connections"]] == [
            str(c) for c in user.connections
        ]


async def test_a_connection_reads_with_its_schedule_when_polled(
    api: RunningApi, alice: User
) -> None:
    mt5, oanda = alice.connections
    webhook = (await api.client.get(f"/v1/connections/{mt5}", headers=alice.headers)).json()
    polled = (await api.client.get(f"/v1/connections/{oanda}", headers=alice.headers)).json()
    assert (webhook["broker"], webhook["poll"]) == ("mt5", None)
    assert webhook["server"] == "PosCal-Test" and webhook["lifecycle"] == "active"
    assert polled["broker"] == "oanda" and polled["server"] is None
    assert polled["poll"]["interval_seconds"] == 60
    assert polled["poll"]["consecutive_failures"] == 0


async def test_another_user_s_connection_is_answered_as_one_that_does_not_exist(
    api: RunningApi, alice: User, bob: User
) -> None:
    theirs, nobody_s = bob.connections[0], uuid.uuid4()
    for method, body in (("GET", None), ("PATCH", {"account_label": "mine now"})):
        not_yours = await api.client.request(
            method, f"/v1/connections/{theirs}", headers=alice.headers, json=body
        )
        missing = await api.client.request(
            method, f"/v1/connections/{nobody_s}", headers=alice.headers, json=body
        )
        assert not_yours.status_code == 404
        _same_answer(not_yours, missing)
    mine = await api.client.get(f"/v1/connections/{theirs}", headers=bob.headers)
    assert mine.json()["account_label"] == "test account"  # Alice's PATCH changed nothing


async def test_an_id_that_is_no_id_is_the_same_404(api: RunningApi, alice: User) -> None:
    missing = await api.client.get(f"/v1/connections/{uuid.uuid4()}", headers=alice.headers)
    for garbage in ("not-an-id", "1", "%00"):
        _same_answer(
            await api.client.get(f"/v1/connections/{garbage}", headers=alice.headers), missing
        )


async def test_a_user_relabels_their_own_connection(
    api: RunningApi, alice: User, pool: asyncpg.Pool
) -> None:
    mine = alice.connections[0]
    response = await api.client.patch(
        f"/v1/connections/{mine}", headers=alice.headers, json={"account_label": "  Main account  "}
    )
    assert response.status_code == 200
    assert response.json()["account_label"] == "Main account"
    assert await pool.fetchval("SELECT account_label FROM mt5_connections WHERE id = $1", mine) == (
        "Main account"
    )


async def test_a_patch_may_change_the_label_only(api: RunningApi, alice: User) -> None:
    response = await api.client.patch(
        f"/v1/connections/{alice.connections[0]}",
        headers=alice.headers,
        json={"account_label": "x", "status": "idle", "user_id": str(uuid.uuid4())},
    )
    assert response.status_code == 422
    assert {f["path"] for f in response.json()["fields"]} == {"body.status", "body.user_id"}


async def test_a_cursor_from_another_user_s_list_reaches_only_the_caller_s_rows(
    api: RunningApi, alice: User, bob: User
) -> None:
    first = await api.client.get("/v1/connections?limit=1", headers=bob.headers)
    cursor = first.json()["next_cursor"]
    assert cursor is not None
    alices = await api.client.get(f"/v1/connections?cursor={cursor}", headers=alice.headers)
    assert {c["id"] for c in alices.json()["connections"]} <= {str(c) for c in alice.connections}


async def test_row_level_security_decides_even_for_a_query_without_a_where(
    api: RunningApi, alice: User, bob: User
) -> None:
    """What a handler that forgot its WHERE would see through the same door: only the
    caller's rows of every table it reads."""
    caller = _caller(alice)
    async with api.wiring.db.as_user(caller) as conn:
        connections = await conn.fetch("SELECT id, user_id FROM mt5_connections")
        schedules = await conn.fetch("SELECT user_id FROM sync_schedule")
        role = await conn.fetchval("SELECT current_user")
    assert role == "authenticated"
    assert {r["user_id"] for r in connections} == {alice.user_id}
    assert {r["id"] for r in connections} == set(alice.connections)
    assert {r["user_id"] for r in schedules} == {alice.user_id}


async def test_the_claims_last_only_for_the_request_s_transaction(
    api: RunningApi, alice: User, pool: asyncpg.Pool
) -> None:
    caller = _caller(alice)
    async with api.wiring.db.as_user(caller):
        pass
    async with pool.acquire() as conn:
        after = await conn.fetchrow(
            "SELECT current_user AS role, current_setting('request.jwt.claims', true) AS claims"
        )
    assert after is not None
    assert after["role"] != "authenticated"
    assert not after["claims"]


async def test_a_privileged_step_runs_as_the_service_only_for_the_owner(
    api: RunningApi, alice: User, bob: User
) -> None:
    caller = _caller(alice)
    async with api.wiring.db.as_service_for(caller, alice.connections[0]) as conn:
        role = await conn.fetchval("SELECT current_user")
        # The service sees past row-level security: what the step may need of other tables.
        everyone = await conn.fetchval("SELECT count(DISTINCT user_id) FROM mt5_connections")
    assert role == "service_role"
    assert everyone >= 2
    ran = False
    for not_hers in (bob.connections[0], uuid.uuid4()):
        with pytest.raises(NotFound):
            async with api.wiring.db.as_service_for(caller, not_hers):
                ran = True
    assert not ran


async def test_no_endpoint_answers_one_user_with_anything_of_another_s(
    api: RunningApi, alice: User, bob: User
) -> None:
    """Every operation the API serves (a new one too), asked by Alice about Bob's connection
    where it takes one: nothing of Bob's in any answer, and nothing of his changed."""
    started = await api.client.post(
        "/v1/wizard/sessions", headers=bob.headers, json=_BODIES["startWizardSession"]
    )
    bobs_session = started.json()["id"]
    bobs = {str(bob.user_id), *map(str, bob.connections), bobs_session}
    before = (await api.client.get("/v1/connections", headers=bob.headers)).json()
    for operation in OPERATIONS:
        path = operation.path.replace("{connection_id}", str(bob.connections[0]))
        path = path.replace("{session_id}", bobs_session)
        assert "{" not in path, f"{operation.operation_id}: teach this spec its path parameter"
        body = None
        if operation.body is not None:
            body = _BODIES.get(operation.operation_id, {"account_label": "Alice was here"})
        response = await api.client.request(
            operation.method, path, headers=alice.headers, json=body
        )
        assert response.status_code in (200, 201, 404), (operation.operation_id, response.text)
        assert not [i for i in bobs if i in response.text], operation.operation_id
    me = (await api.client.get("/v1/me", headers=alice.headers)).json()
    assert me["user_id"] == str(alice.user_id)
    assert (await api.client.get("/v1/connections", headers=bob.headers)).json() == before
    session = await api.client.get(f"/v1/wizard/sessions/{bobs_session}", headers=bob.headers)
    assert session.json()["state"] == "verified"  # Alice's confirm made nothing of it


@pytest.fixture
async def login_role_pool(pool: asyncpg.Pool, database_url: str) -> AsyncIterator[asyncpg.Pool]:
    """A pool logged in as the API's login role in production: NOINHERIT, holding nothing but
    membership in `authenticated` and `service_role`."""
    role = f"poscal_api_{uuid.uuid4().hex[:8]}"
    await pool.execute(f"CREATE ROLE {role} LOGIN NOINHERIT")
    await pool.execute(f"GRANT authenticated, service_role TO {role}")
    parts = urlsplit(database_url)
    host = parts.netloc.rsplit("@", 1)[-1]
    login = await create_pool(urlunsplit(parts._replace(netloc=f"{role}@{host}")), max_size=2)
    try:
        yield login
    finally:
        await login.close()
        await pool.execute(f"DROP ROLE {role}")


async def test_the_api_needs_no_privilege_of_its_own_to_answer(
    login_role_pool: asyncpg.Pool, database_url: str, alice: User
) -> None:
    async with running_api(api_settings(database_url), login_role_pool) as api:
        listed = await api.client.get("/v1/connections", headers=alice.headers)
        relabelled = await api.client.patch(
            f"/v1/connections/{alice.connections[0]}",
            headers=alice.headers,
            json={"account_label": "as the user"},
        )
        async with api.wiring.db.as_service_for(_caller(alice), alice.connections[0]) as conn:
            assert await conn.fetchval("SELECT current_user") == "service_role"
    assert [c["id"] for c in listed.json()["connections"]] == [str(c) for c in alice.connections]
    assert relabelled.json()["account_label"] == "as the user"
    # Around the two doors, the login role reads nothing: a query that forgot them fails.
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await login_role_pool.fetch("SELECT id FROM mt5_connections")


def _caller(user: User) -> Caller:
    """The caller a verified token of `user` becomes."""
    claims = {"sub": str(user.user_id), "role": "authenticated", "aud": "authenticated"}
    return Caller(user.user_id, datetime.now(UTC) + timedelta(hours=1), json.dumps(claims))
