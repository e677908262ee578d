"""The app API as HTTP, against the real app on the session's Postgres: one JSON error shape for
every refusal, the security headers on every answer, CORS for configured origins only, the body
limit before reading past it, per-user budgets spent by each route's cost, pagination, and the
brokers as their plug-ins describe them."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator

import asyncpg
import httpx
import pytest

from services.api.app import create_app
from services.api.bootstrap import ApiWiring, wire
from services.api.openapi import ERROR_STATUSES
from services.shared.brokers import broker, broker_names
from services.shared.database import create_pool
from services.shared.vault import CredentialVault
from tests.support.api import RunningApi, api_settings, bearer, hs256, running_api
from tests.support.builders import connect_broker_account, new_connection
from tests.support.metrics import sample

pytestmark = pytest.mark.integration

ORIGIN = "https://app.poscal.example"
SECURITY_HEADERS = {
    "strict-transport-security": "max-age=31536000; includeSubDomains",
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
    "cache-control": "no-store",
    "content-security-policy": "default-src 'none'; frame-ancestors 'none'; base-uri 'none'",
}


@pytest.fixture
async def api(pool: asyncpg.Pool, database_url: str) -> AsyncIterator[RunningApi]:
    settings = api_settings(database_url, cors_origins=ORIGIN, max_body_bytes=2048)
    async with running_api(settings, pool) as running:
        yield running


@pytest.fixture
async def user(pool: asyncpg.Pool, vault: CredentialVault) -> uuid.UUID:
    async with pool.acquire() as conn:
        return (await new_connection(conn, vault)).user_id


def assert_error(response: httpx.Response, status: int) -> dict[str, object]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body: dict[str, object] = response.json()
    assert set(body) <= {"error", "detail", "fields"} and {"error", "detail"} <= set(body)
    assert ERROR_STATUSES[str(body["error"])] == status
    return body


async def _answers(api: RunningApi, user: uuid.UUID) -> dict[str, httpx.Response]:
    me = bearer(hs256(user))
    return {
        "200": await api.client.get("/v1/me", headers=me),
        "401": await api.client.get("/v1/me"),
        "404": await api.client.get("/nowhere", headers=me),
        "405": await api.client.delete("/v1/me", headers=me),
        "413": await api.client.patch(
            f"/v1/connections/{uuid.uuid4()}", headers=me, content=b"{" + b" " * 5000 + b"}"
        ),
        "415": await api.client.patch(
            f"/v1/connections/{uuid.uuid4()}", headers=me, content=b"label=x"
        ),
        "422": await api.client.get("/v1/connections?limit=0", headers=me),
        "healthz": await api.client.get("/healthz"),
        "openapi": await api.client.get("/openapi.json"),
    }


async def test_every_answer_carries_the_security_headers(api: RunningApi, user: uuid.UUID) -> None:
    for name, response in (await _answers(api, user)).items():
        for header, value in SECURITY_HEADERS.items():
            assert response.headers.get(header) == value, f"{name}: {header}"


async def test_every_refusal_is_the_one_json_shape(api: RunningApi, user: uuid.UUID) -> None:
    answers = await _answers(api, user)
    for status in ("401", "404", "405", "413", "415", "422"):
        assert_error(answers[status], int(status))
    assert set(answers["405"].headers["allow"].split(", ")) == {"GET", "HEAD"}
    assert answers["422"].json()["fields"][0]["path"] == "query.limit"


async def test_an_allowed_origin_gets_cors_headers_even_on_a_refusal(api: RunningApi) -> None:
    response = await api.client.get("/v1/me", headers={"Origin": ORIGIN})
    assert response.status_code == 401
    assert response.headers["access-control-allow-origin"] == ORIGIN
    assert "www-authenticate" in response.headers["access-control-expose-headers"].lower()
    assert "access-control-allow-credentials" not in response.headers


async def test_a_preflight_from_an_allowed_origin_may_send_the_authorization_header(
    api: RunningApi,
) -> None:
    response = await api.client.options(
        "/v1/connections",
        headers={
            "Origin": ORIGIN,
            "Access-Control-Request-Method": "PATCH",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == ORIGIN
    allowed = response.headers["access-control-allow-headers"].lower()
    assert "authorization" in allowed and "content-type" in allowed


async def test_any_other_origin_gets_no_cors_headers(api: RunningApi, user: uuid.UUID) -> None:
    simple = await api.client.get(
        "/v1/me", headers={"Origin": "https://evil.example", **bearer(hs256(user))}
    )
    preflight = await api.client.options(
        "/v1/me",
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "GET"},
    )
    assert simple.status_code == 200
    # Starlette names the exposed headers to anyone; without an allowed origin, nothing is read.
    assert "access-control-allow-origin" not in simple.headers
    assert_error(preflight, 400)
    assert not [h for h in preflight.headers if h.startswith("access-control-allow-")]


async def test_a_body_over_the_limit_is_refused_without_reading_past_it(
    api: RunningApi, user: uuid.UUID
) -> None:
    sent: list[int] = []

    async def endless() -> AsyncIterator[bytes]:
        for _ in range(1000):
            sent.append(1)
            yield b" " * 1024

    response = await api.client.patch(
        f"/v1/connections/{uuid.uuid4()}",
        headers={**bearer(hs256(user)), "content-type": "application/json"},
        content=endless(),
    )
    assert_error(response, 413)
    assert len(sent) <= 4  # 2048 bytes allowed: the third kilobyte is the last one read


async def test_a_declared_length_over_the_limit_is_refused_before_anything_is_read(
    api: RunningApi, user: uuid.UUID
) -> None:
    read: list[int] = []

    async def body() -> AsyncIterator[bytes]:
        read.append(1)
        yield b"{}"

    response = await api.client.patch(
        f"/v1/connections/{uuid.uuid4()}",
        headers={
            **bearer(hs256(user)),
            "content-type": "application/json",
            "content-length": "999999",
        },
        content=body(),
    )
    assert_error(response, 413)
    assert read == []


async def test_a_body_that_is_not_json_is_a_422_naming_the_body(
    api: RunningApi, pool: asyncpg.Pool, vault: CredentialVault
) -> None:
    async with pool.acquire() as conn:
        mine = await new_connection(conn, vault)
    response = await api.client.patch(
        f"/v1/connections/{mine.created.connection_id}",
        headers={**bearer(hs256(mine.user_id)), "content-type": "application/json"},
        content=b'{"account_label": ',
    )
    body = assert_error(response, 422)
    assert [f["path"] for f in body["fields"]] == ["body"]  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "label", ["", "   ", "x" * 201, "tab\there", "zero\u200bwidth", 7, None], ids=repr
)
async def test_a_label_must_be_printable_text_of_at_most_200_characters(
    label: object, api: RunningApi, pool: asyncpg.Pool, vault: CredentialVault
) -> None:
    async with pool.acquire() as conn:
        mine = await new_connection(conn, vault)
    response = await api.client.patch(
        f"/v1/connections/{mine.created.connection_id}",
        headers=bearer(hs256(mine.user_id)),
        json={"account_label": label},
    )
    body = assert_error(response, 422)
    assert [f["path"] for f in body["fields"]] == ["body.account_label"]  # type: ignore[attr-defined]


async def test_each_request_spends_its_route_s_cost_and_a_refused_one_spends_nothing(
    pool: asyncpg.Pool, database_url: str, user: uuid.UUID
) -> None:
    settings = api_settings(database_url, rate_limit_per_user="3/hour")
    async with running_api(settings, pool) as api:
        me = bearer(hs256(user))
        listed = await api.client.get("/v1/connections", headers=me)  # costs 2
        over = await api.client.get("/v1/connections", headers=me)  # 2 more do not fit
        cheap = await api.client.get("/v1/me", headers=me)  # 1 still does
        spent = await api.client.get("/v1/me", headers=me)
        someone_else = await api.client.get("/v1/me", headers=bearer(hs256(uuid.uuid4())))
    assert listed.status_code == 200
    assert_error(over, 429)
    assert 1 <= int(over.headers["retry-after"]) <= 3600
    assert cheap.status_code == 200
    assert_error(spent, 429)
    assert someone_else.status_code == 200


async def test_pages_walk_the_whole_list_once_in_order(
    api: RunningApi, pool: asyncpg.Pool, vault: CredentialVault
) -> None:
    async with pool.acquire() as conn:
        first = await new_connection(conn, vault)
        others = [
            (
                await connect_broker_account(
                    conn, vault, first.user_id, "oanda", f"101-{n}-{uuid.uuid4().int % 10**9}"
                )
            ).connection_id
            for n in range(4)
        ]
    expected = [str(first.created.connection_id), *map(str, others)]
    me = bearer(hs256(first.user_id))
    seen: list[str] = []
    url = "/v1/connections?limit=2"
    while True:
        page = (await api.client.get(url, headers=me)).json()
        seen += [c["id"] for c in page["connections"]]
        if page["next_cursor"] is None:
            break
        url = f"/v1/connections?limit=2&cursor={page['next_cursor']}"
    assert seen == expected


@pytest.mark.parametrize("query", ["limit=101", "limit=0", "limit=x", "cursor=not-a-cursor"])
async def test_a_limit_past_the_maximum_or_a_cursor_not_handed_out_is_a_422(
    query: str, api: RunningApi, user: uuid.UUID
) -> None:
    response = await api.client.get(f"/v1/connections?{query}", headers=bearer(hs256(user)))
    body = assert_error(response, 422)
    assert [f["path"] for f in body["fields"]] == [f"query.{query.split('=')[0]}"]  # type: ignore[attr-defined]


async def test_the_brokers_are_what_their_plug_ins_say(api: RunningApi, user: uuid.UUID) -> None:
    response = await api.client.get("/v1/brokers", headers=bearer(hs256(user)))
    listed = {b["name"]: b for b in response.json()["brokers"]}
    assert list(listed) == list(broker_names())
    for name, described in listed.items():
        plugin = broker(name)
        assert described["title"] == plugin.title
        assert described["credential_fields"] == [
            {"name": f.name, "label": f.label, "secret": f.secret}
            for f in plugin.credentials.fields
        ]
        assert described["connection_types"] == list(plugin.connection_types)
    assert {name: described["syncs_by"] for name, described in listed.items()} == {
        "ibkr": ["poll"],
        "mt5": ["webhook", "poll"],
        "oanda": ["poll"],
    }
    password = next(f for f in listed["mt5"]["credential_fields"] if f["name"] == "password")
    assert password["secret"] is True


async def test_a_failure_inside_is_a_500_that_says_nothing_of_it(
    database_url: str, user: uuid.UUID
) -> None:
    settings = api_settings(database_url)
    closed = await create_pool(database_url, min_size=1, max_size=1)
    await closed.close()

    async def build(_: contextlib.AsyncExitStack) -> ApiWiring:
        return wire(settings, closed)

    app = create_app(settings, build)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api") as client,
    ):
        response = await client.get("/v1/connections", headers=bearer(hs256(user)))
    body = assert_error(response, 500)
    assert body["detail"] == "something went wrong on our side; it has been logged"
    assert "pool" not in response.text.lower()
    assert response.headers["cache-control"] == "no-store"


async def test_before_it_is_wired_the_api_answers_503_with_retry_after(database_url: str) -> None:
    app = create_app(api_settings(database_url))  # its lifespan (the connecting) never started
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://api"
    ) as client:
        response = await client.get("/v1/me", headers=bearer(hs256(uuid.uuid4())))
        ready = await client.get("/readyz")
    assert_error(response, 503)
    assert response.headers["retry-after"] == "5"
    assert ready.status_code == 503


async def test_the_apis_requests_are_timed_by_route_template_and_status(
    api: RunningApi, user: uuid.UUID
) -> None:
    count = "poscal_api_request_duration_seconds_count"
    route = "/v1/connections/{connection_id}"
    labels = {"method": "GET", "route": route, "status": "404"}
    before = sample(count, **labels)
    unauthorized_before = sample(count, method="GET", route="/v1/me", status="401")
    me = bearer(hs256(user))
    for _ in range(2):
        assert (
            await api.client.get(f"/v1/connections/{uuid.uuid4()}", headers=me)
        ).status_code == 404
    assert (await api.client.get("/v1/me")).status_code == 401
    assert sample(count, **labels) == before + 2
    assert sample(count, method="GET", route="/v1/me", status="401") == unauthorized_before + 1
