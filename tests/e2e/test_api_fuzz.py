"""A fuzz pass over the app API's OpenAPI document (schemathesis) against the real `python -m
services.api` process on the session's Postgres: whatever the document allows, and whatever it
does not, no answer is a 5xx, and every answer is one the document describes."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import asyncpg
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from services.api.openapi import openapi_document
from services.devstack.ports import free_port
from services.shared.vault import CredentialVault
from tests.support.api import JWT_SECRET, hs256
from tests.support.builders import connect_broker_account, new_connection
from tests.support.fake_flex import FakeFlex
from tests.support.fake_oanda import FakeOanda
from tests.support.service_process import ServiceProcess, wait_until_ready

pytestmark = pytest.mark.e2e

SCHEMA = schemathesis.openapi.from_dict(openapi_document())
# What the document allows and what it does not (a limit of 0, a label of a number, a path id
# that is no UUID): every answer must still be a documented one.
SCHEMA.config.generation.update(
    modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE], deterministic=True
)
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
FUZZ = settings(
    max_examples=60,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


@pytest.fixture(scope="module")
def api_url(
    tmp_path_factory: pytest.TempPathFactory, database_url: str, master_key: str
) -> Iterator[str]:
    port = free_port()
    # The wizard signs in at the brokers: here the local fakes, so no request leaves the
    # machine and whatever is made up for credentials gets the broker's own refusal.
    with FakeOanda() as oanda, FakeFlex() as flex:
        yield from _served_api(tmp_path_factory, database_url, master_key, port, oanda, flex)


def _served_api(
    tmp_path_factory: pytest.TempPathFactory,
    database_url: str,
    master_key: str,
    port: int,
    oanda: FakeOanda,
    flex: FakeFlex,
) -> Iterator[str]:
    env = {
        # The wizard and the controls that seal secrets (a new webhook secret, new credentials).
        "POSCAL_MASTER_KEY": master_key,
        "POSCAL_API_BROKER_URLS": f"oanda={oanda.url},ibkr={flex.url}",
        "DATABASE_URL": database_url,
        "POSCAL_API_PORT": str(port),
        "POSCAL_API_JWT_SECRET": JWT_SECRET,
        "POSCAL_API_CORS_ORIGINS": "https://app.poscal.example",
        # Budgets high enough that the fuzz reaches the handlers rather than the limiter.
        "POSCAL_API_RATE_LIMIT_PER_USER": "1000000/minute",
        "POSCAL_API_AUTH_FAILURES_PER_CLIENT": "1000000/minute",
    }
    url = f"http://127.0.0.1:{port}"
    with ServiceProcess("api", env, tmp_path_factory.mktemp("api")) as api:
        wait_until_ready(api, url)
        yield url


@pytest.fixture(scope="module")
async def owner(pool: asyncpg.Pool, vault: CredentialVault) -> uuid.UUID:
    """A user with a webhook (MT5) and a polled (OANDA) connection, so pages have rows."""
    async with pool.acquire() as conn:
        mt5 = await new_connection(conn, vault)
        await connect_broker_account(
            conn, vault, mt5.user_id, "oanda", f"101-004-{uuid.uuid4().int % 10**7}-001"
        )
    return mt5.user_id


def _with_token(case: Any, token: str) -> None:
    case.headers = {**(case.headers or {}), "Authorization": f"Bearer {token}"}


@SCHEMA.parametrize()
@FUZZ
def test_signed_in_no_request_is_a_server_error(case: Any, api_url: str, owner: uuid.UUID) -> None:
    _with_token(case, hs256(owner))
    response = case.call(base_url=api_url, timeout=10)
    case.validate_response(response, checks=CHECKS)


@SCHEMA.parametrize()
@FUZZ
def test_with_whatever_token_no_request_is_a_server_error(case: Any, api_url: str) -> None:
    """The security scheme's bearer token as schemathesis makes it up: refused, never a 5xx."""
    response = case.call(base_url=api_url, timeout=10)
    case.validate_response(response, checks=CHECKS)
    # Only a method the path does not take is answered (405) before the token is looked at.
    if case.operation.path.startswith("/v1/") and case.method == case.operation.method.upper():
        assert response.status_code in (401, 429), response.text
