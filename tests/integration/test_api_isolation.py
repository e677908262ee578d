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
    # A budget no spec here reaches: every operation is asked many times in a row.
    settings = api_settings(
        database_url, master_key=master_key, rate_limit_per_user="100000/minute"
    )
    async with running_api(settings, pool) as running:
        yield running


# A valid body for each operation that takes one, so the request reaches its handler.
BODIES: dict[str, dict[str, object]] = {
    "changeConnection": {"account_label": "Alice was here"},
    "rotateWebhookSecret": {"overlap_seconds": 0},
    "setConnectionCredentials": {"credentials": "alice-s-token-" + "a" * 20},
    # An Expert Advisor's session: no broker asked.
    "startWizardSession": {
        "broker": "mt5",
        "connection_type": "demo",
        "sync": "webhook",
        "credentials": {"login": "4242", "server": "PosCal-Test"},
    },
    "confirmWizardSession": {"account_number": "4242", "account_label": "Alice was here"},
}


def _body(operation_id: str, takes_one: bool) -> dict[str, object] | None:
    if not takes_one:
        return None
    assert operation_id in BODIES, f"{operation_id}: teach this spec a valid body"
    return BODIES[operation_id]


async def _everything_of(pool: asyncpg.Pool, user: User) -> list[object]:
    """Every row the services keep of the user's connections, as stored."""
    ids = list(user.connections)
    found: list[object] = []
    for table, key in (
        ("mt5_connections", "id"),
        ("sync_schedule", "connection_id"),
        ("mt5_credentials", "connection_id"),
        ("mt5_security_audit", "connection_id"),
        ("cloud_terminals", "connection_id"),
    ):
        rows = await pool.fetch(
            f"SELECT * FROM {table} WHERE {key} = ANY($1::uuid[]) ORDER BY 1",  # noqa: S608
            ids,
        )
        found += [(table, dict(r)) for r in rows]
    return found


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
    api: RunningApi, alice: User, bob: User, pool: asyncpg.Pool
) -> None:
    """Every operation on a connection (a new one too), asked by Alice of each of Bob's
    connections: the same 404, byte for byte, as for one that does not exist, and nothing of
    Bob's changed (sync now, pause, delete, a new secret... all refused alike)."""
    before = await _everything_of(pool, bob)
    on_a_connection = [o for o in OPERATIONS if "{connection_id}" in o.path]
    assert on_a_connection
    for operation in on_a_connection:
        body = _body(operation.operation_id, operation.body is not None)
        for theirs in bob.connections:
            not_yours = await api.client.request(
                operation.method,
                operation.path.replace("{connection_id}", str(theirs)),
                headers=alice.headers,
                json=body,
            )
            missing = await api.client.request(
                operation.method,
                operation.path.replace("{connection_id}", str(uuid.uuid4())),
                headers=alice.headers,
                json=body,
            )
            assert not_yours.status_code == 404, (operation.operation_id, not_yours.text)
            _same_answer(not_yours, missing)
    assert await _everything_of(pool, bob) == before
    mine = await api.client.get(f"/v1/connections/{bob.connections[0]}", headers=bob.headers)
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
        "/v1/wizard/sessions", headers=bob.headers, json=BODIES["startWizardSession"]
    )
    bobs_session = started.json()["id"]
    bobs = {str(bob.user_id), *map(str, bob.connections), bobs_session}
    before = (await api.client.get("/v1/connections", headers=bob.headers)).json()
    for operation in OPERATIONS:
        path = operation.path.replace("{connection_id}", str(bob.connections[0]))
        path = path.replace("{session_id}", bobs_session)
        assert "{" not in path, f"{operation.operation_id}: teach this spec its path parameter"
        body = _body(operation.operation_id, operation.body is not None)
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


async def test_the_controls_need_no_privilege_of_the_api_s_own_either(
    login_role_pool: asyncpg.Pool, database_url: str, master_key: str, alice: User
) -> None:
    """As the NOINHERIT login role: every write of the controls is the service role's."""
    mt5, oanda = alice.connections
    settings = api_settings(database_url, master_key=master_key)
    async with running_api(settings, login_role_pool) as api:
        answers = [
            await api.client.post(f"/v1/connections/{oanda}/pause", headers=alice.headers),
            await api.client.post(f"/v1/connections/{oanda}/resume", headers=alice.headers),
            await api.client.put(
                f"/v1/connections/{oanda}/credentials",
                headers=alice.headers,
                json={"credentials": "a-token-" + "b" * 20},
            ),
            await api.client.post(f"/v1/connections/{oanda}/sync", headers=alice.headers),
            await api.client.post(
                f"/v1/connections/{mt5}/webhook-secret", headers=alice.headers, json={}
            ),
            await api.client.post(f"/v1/connections/{mt5}/webhook-url", headers=alice.headers),
            await api.client.get(f"/v1/connections/{mt5}/status", headers=alice.headers),
            await api.client.get(f"/v1/connections/{mt5}/history", headers=alice.headers),
            await api.client.delete(f"/v1/connections/{oanda}", headers=alice.headers),
        ]
    assert [a.status_code for a in answers] == [200, 200, 200, 202, 200, 200, 200, 200, 200], [
        a.text for a in answers
    ]


def _caller(user: User) -> Caller:
    """The caller a verified token of `user` becomes."""
    claims = {"sub": str(user.user_id), "role": "authenticated", "aud": "authenticated"}
    return Caller(user.user_id, datetime.now(UTC) + timedelta(hours=1), json.dumps(claims))
