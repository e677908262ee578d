"""The connection controls of the app API against the real app on the session's Postgres: sync
now within the sync limits, pause and resume, enable live after a demo sync, a new webhook
secret (shown once) or URL, new broker credentials sealed in the vault, and deletion that
destroys credentials and removes a cloud terminal first."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime

import asyncpg
import orjson
import pytest

from services.poller.schedule import SyncSchedule
from services.shared.brokers.provisioning import ProvisioningUnavailable
from services.shared.credential_kinds import BROKER_CREDENTIALS, WEBHOOK_SECRET
from services.shared.signatures import decode_secret
from services.shared.sync_limits import UserSyncLimit
from services.shared.vault import CredentialVault
from tests.support.api import RunningApi, api_settings, bearer, hs256, running_api
from tests.support.builders import connect_broker_account, new_connection

pytestmark = pytest.mark.integration

OANDA_TOKEN = "oanda-token-" + "7" * 24


@pytest.fixture
async def api(pool: asyncpg.Pool, database_url: str, master_key: str) -> AsyncIterator[RunningApi]:
    settings = api_settings(
        database_url,
        master_key=master_key,
        sync_rate_per_user="3/minute",
        sync_now_min_interval_seconds=60,
    )
    async with running_api(settings, pool) as running:
        yield running


@dataclass(frozen=True)
class Trader:
    user_id: uuid.UUID
    mt5: uuid.UUID  # fed by its Expert Advisor's webhooks

    @property
    def headers(self) -> dict[str, str]:
        return bearer(hs256(self.user_id))


@pytest.fixture
async def trader(pool: asyncpg.Pool, vault: CredentialVault) -> Trader:
    async with pool.acquire() as conn:
        mt5 = await new_connection(conn, vault)
    return Trader(mt5.user_id, mt5.created.connection_id)


async def polled(
    pool: asyncpg.Pool,
    vault: CredentialVault,
    trader: Trader,
    *,
    connection_type: str = "demo",
    credentials: bool = True,
) -> uuid.UUID:
    """An OANDA connection of the trader's, not due for an hour, with a token stored."""
    async with pool.acquire() as conn:
        created = await connect_broker_account(
            conn,
            vault,
            trader.user_id,
            "oanda",
            f"101-004-{uuid.uuid4().int % 10**7}-001",
            connection_type=connection_type,  # type: ignore[arg-type]
        )
        if credentials:
            await vault.store(
                conn,
                user_id=trader.user_id,
                connection_id=created.connection_id,
                kind=BROKER_CREDENTIALS,
                plaintext=OANDA_TOKEN.encode(),
            )
        await conn.execute(
            "UPDATE sync_schedule SET next_sync_at = now() + interval '1 hour'"
            " WHERE connection_id = $1",
            created.connection_id,
        )
    return created.connection_id


# --- Sync now ---------------------------------------------------------------------------------


async def test_sync_now_makes_a_polled_connection_due_at_once(
    api: RunningApi, pool: asyncpg.Pool, vault: CredentialVault, trader: Trader
) -> None:
    oanda = await polled(pool, vault, trader)
    response = await api.client.post(f"/v1/connections/{oanda}/sync", headers=trader.headers)
    assert response.status_code == 202, response.text
    assert response.json()["state"] == "queued"
    assert await pool.fetchval(
        "SELECT next_sync_at <= now() FROM sync_schedule WHERE connection_id = $1", oanda
    )


async def test_sync_now_of_a_webhook_connection_says_it_syncs_when_its_ea_sends(
    api: RunningApi, trader: Trader
) -> None:
    response = await api.client.post(f"/v1/connections/{trader.mt5}/sync", headers=trader.headers)
    assert response.status_code == 409
    assert response.json()["error"] == "not_polled"
    assert "Expert Advisor" in response.json()["detail"]


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ("UPDATE mt5_connections SET lifecycle = 'paused' WHERE id = $1", "paused"),
        (
            "DELETE FROM mt5_credentials WHERE connection_id = $1 AND kind = 'broker_credentials'",
            "no broker credentials",
        ),
        (
            "UPDATE sync_schedule SET rejected_credential_id = (SELECT id FROM mt5_credentials"
            " WHERE connection_id = $1 AND kind = 'broker_credentials') WHERE connection_id = $1",
            "refused its credentials",
        ),
    ],
)
async def test_sync_now_of_a_connection_the_poller_would_not_sync_says_why(
    api: RunningApi,
    pool: asyncpg.Pool,
    vault: CredentialVault,
    trader: Trader,
    change: str,
    reason: str,
) -> None:
    oanda = await polled(pool, vault, trader)
    await pool.execute(change, oanda)
    response = await api.client.post(f"/v1/connections/{oanda}/sync", headers=trader.headers)
    assert response.status_code == 409
    assert response.json()["error"] == "not_ready_to_sync"
    assert reason in response.json()["detail"]
    assert not await pool.fetchval(
        "SELECT next_sync_at <= now() FROM sync_schedule WHERE connection_id = $1", oanda
    )


async def test_a_connection_that_just_synced_is_not_synced_again_before_its_floor(
    api: RunningApi, pool: asyncpg.Pool, vault: CredentialVault, trader: Trader
) -> None:
    oanda = await polled(pool, vault, trader)
    await pool.execute(
        "UPDATE sync_schedule SET last_attempt_at = now() - interval '20 seconds'"
        " WHERE connection_id = $1",
        oanda,
    )
    response = await api.client.post(f"/v1/connections/{oanda}/sync", headers=trader.headers)
    assert response.status_code == 429
    assert response.json()["error"] == "sync_rate_limited"
    assert 30 <= int(response.headers["retry-after"]) <= 41


async def test_sync_now_keeps_to_the_poller_s_per_user_limit(
    api: RunningApi, pool: asyncpg.Pool, vault: CredentialVault, trader: Trader
) -> None:
    """3 syncs a minute for this API, as the poller counts them: the user's connections
    attempted within the window. The wait is until the oldest counted attempt leaves it."""
    connections = [await polled(pool, vault, trader) for _ in range(4)]
    for ago, connection in zip((50, 30, 10), connections, strict=False):
        await pool.execute(
            "UPDATE sync_schedule SET last_attempt_at = now() - make_interval(secs => $2)"
            " WHERE connection_id = $1",
            connection,
            ago,
        )
    response = await api.client.post(
        f"/v1/connections/{connections[3]}/sync", headers=trader.headers
    )
    assert response.status_code == 429
    assert response.json()["error"] == "sync_rate_limited"
    assert 9 <= int(response.headers["retry-after"]) <= 12


async def test_sync_now_refuses_exactly_when_the_poller_would_hold_the_sync_back(
    api: RunningApi, pool: asyncpg.Pool, vault: CredentialVault, trader: Trader
) -> None:
    """The API's 429 and the poller's lease agree: the same limit, counted the same way."""
    connections = [await polled(pool, vault, trader) for _ in range(4)]
    asked = connections[3]
    for connection in connections[:3]:
        await pool.execute(
            "UPDATE sync_schedule SET last_attempt_at = now() - interval '5 seconds'"
            " WHERE connection_id = $1",
            connection,
        )
    await pool.execute(
        "UPDATE sync_schedule SET next_sync_at = now() WHERE connection_id = $1", asked
    )
    # Only this spec's connections are the poller's to lease here.
    others = frozenset(
        r["connection_id"]
        for r in await pool.fetch(
            "SELECT connection_id FROM sync_schedule WHERE NOT connection_id = ANY($1::uuid[])",
            connections,
        )
    )
    poller = SyncSchedule(pool, "coherence", 60, user_limit=UserSyncLimit(3, 60))
    refused = await api.client.post(f"/v1/connections/{asked}/sync", headers=trader.headers)
    assert refused.status_code == 429
    assert await poller.lease_due(10, exclude=others) == []
    await pool.execute(
        "UPDATE sync_schedule SET last_attempt_at = last_attempt_at - interval '1 minute'"
        " WHERE connection_id = ANY($1::uuid[])",
        connections[:3],
    )
    queued = await api.client.post(f"/v1/connections/{asked}/sync", headers=trader.headers)
    assert queued.status_code == 202, queued.text
    [leased] = await poller.lease_due(10, exclude=others)
    assert leased.connection.connection_id == asked


async def test_sync_now_of_a_connection_syncing_now_changes_nothing(
    api: RunningApi, pool: asyncpg.Pool, vault: CredentialVault, trader: Trader
) -> None:
    oanda = await polled(pool, vault, trader)
    await pool.execute(
        "UPDATE sync_schedule SET lease_until = now() + interval '1 minute',"
        " lease_token = gen_random_uuid() WHERE connection_id = $1",
        oanda,
    )
    response = await api.client.post(f"/v1/connections/{oanda}/sync", headers=trader.headers)
    assert response.status_code == 202
    assert response.json()["state"] == "already_syncing"


# --- Pause and resume -------------------------------------------------------------------------


async def test_pause_and_resume_a_polled_connection(
    api: RunningApi, pool: asyncpg.Pool, vault: CredentialVault, trader: Trader
) -> None:
    oanda = await polled(pool, vault, trader)
    for _ in range(2):  # pausing a paused connection changes nothing
        paused = await api.client.post(f"/v1/connections/{oanda}/pause", headers=trader.headers)
        assert paused.status_code == 200, paused.text
        assert paused.json()["lifecycle"] == "paused"
    assert await pool.fetchval("SELECT lifecycle FROM mt5_connections WHERE id = $1", oanda) == (
        "paused"
    )
    resumed = await api.client.post(f"/v1/connections/{oanda}/resume", headers=trader.headers)
    assert resumed.status_code == 200
    assert resumed.json()["lifecycle"] == "active"
    # Due at once, to catch up on what the pause held back.
    assert await pool.fetchval(
        "SELECT next_sync_at <= now() FROM sync_schedule WHERE connection_id = $1", oanda
    )


async def test_a_locked_connection_is_neither_paused_nor_resumed(
    api: RunningApi, pool: asyncpg.Pool, trader: Trader
) -> None:
    await pool.execute("UPDATE mt5_connections SET lifecycle = 'locked' WHERE id = $1", trader.mt5)
    for control in ("pause", "resume"):
        response = await api.client.post(
            f"/v1/connections/{trader.mt5}/{control}", headers=trader.headers
        )
        assert response.status_code == 409
        assert response.json()["error"] == "lifecycle_refused"
        assert "rotate its webhook secret" in response.json()["detail"]
    assert await pool.fetchval(
        "SELECT lifecycle FROM mt5_connections WHERE id = $1", trader.mt5
    ) == ("locked")


# --- Enable live ------------------------------------------------------------------------------


async def test_live_is_enabled_only_after_a_demo_of_the_same_broker_synced(
    api: RunningApi, pool: asyncpg.Pool, vault: CredentialVault, trader: Trader
) -> None:
    live = await polled(pool, vault, trader, connection_type="live")
    refused = await api.client.post(f"/v1/connections/{live}/enable-live", headers=trader.headers)
    assert refused.status_code == 409
    assert refused.json()["error"] == "demo_sync_missing"
    assert "OANDA demo" in refused.json()["detail"]
    assert (
        await pool.fetchval("SELECT live_enabled_at FROM mt5_connections WHERE id = $1", live)
        is None
    )
    demo = await polled(pool, vault, trader)
    await pool.execute(
        "UPDATE sync_schedule SET last_success_at = now() WHERE connection_id = $1", demo
    )
    enabled = await api.client.post(f"/v1/connections/{live}/enable-live", headers=trader.headers)
    assert enabled.status_code == 200, enabled.text
    assert enabled.json()["live_enabled_at"] is not None


async def test_a_demo_connection_needs_no_enabling(
    api: RunningApi, pool: asyncpg.Pool, vault: CredentialVault, trader: Trader
) -> None:
    response = await api.client.post(
        f"/v1/connections/{trader.mt5}/enable-live", headers=trader.headers
    )
    assert response.status_code == 409
    assert response.json()["error"] == "not_live"


# --- Webhook secret and URL -------------------------------------------------------------------


async def test_a_new_webhook_secret_is_shown_once_and_is_the_one_that_verifies(
    api: RunningApi, pool: asyncpg.Pool, vault: CredentialVault, trader: Trader
) -> None:
    response = await api.client.post(
        f"/v1/connections/{trader.mt5}/webhook-secret",
        headers=trader.headers,
        json={"overlap_seconds": 0},
    )
    assert response.status_code == 200, response.text
    secret = response.json()["webhook_secret"]
    async with pool.acquire() as conn:
        active = await vault.open_active(conn, trader.mt5, WEBHOOK_SECRET, datetime.now(UTC))
    assert active == [decode_secret(secret)]  # overlap 0: the old one no longer verifies
    # Shown in that answer only: nothing else the API answers holds it.
    for path in ("", "/status", "/history"):
        again = await api.client.get(f"/v1/connections/{trader.mt5}{path}", headers=trader.headers)
        assert secret not in again.text
    listed = await api.client.get("/v1/connections", headers=trader.headers)
    assert secret not in listed.text


async def test_a_new_webhook_url_ends_the_old_one_at_once(
    api: RunningApi, pool: asyncpg.Pool, trader: Trader
) -> None:
    before = await pool.fetchval(
        "SELECT webhook_path_id FROM mt5_connections WHERE id = $1", trader.mt5
    )
    response = await api.client.post(
        f"/v1/connections/{trader.mt5}/webhook-url", headers=trader.headers
    )
    assert response.status_code == 200, response.text
    after = await pool.fetchval(
        "SELECT webhook_path_id FROM mt5_connections WHERE id = $1", trader.mt5
    )
    assert after != before
    assert response.json()["webhook_url"] == f"http://127.0.0.1:8080/v1/webhooks/mt5/{after}"


# --- Credentials ------------------------------------------------------------------------------


async def test_new_credentials_are_sealed_in_the_vault_and_never_answered(
    api: RunningApi, pool: asyncpg.Pool, vault: CredentialVault, trader: Trader
) -> None:
    oanda = await polled(pool, vault, trader)
    token = "  new-oanda-token-" + "9" * 20 + "\n"
    response = await api.client.put(
        f"/v1/connections/{oanda}/credentials", headers=trader.headers, json={"credentials": token}
    )
    assert response.status_code == 200, response.text
    assert token.strip() not in response.text
    async with pool.acquire() as conn:
        active = await vault.open_active(conn, oanda, BROKER_CREDENTIALS, datetime.now(UTC))
    assert active == [token.strip().encode()]  # the one it replaced is revoked
    assert await pool.fetchval(
        "SELECT next_sync_at <= now() FROM sync_schedule WHERE connection_id = $1", oanda
    )


async def test_credentials_of_a_cloud_terminal_connection_are_refused_saying_why(
    api: RunningApi, pool: asyncpg.Pool, trader: Trader
) -> None:
    response = await api.client.put(
        f"/v1/connections/{trader.mt5}/credentials",
        headers=trader.headers,
        json={"credentials": '{"login": "1", "password": "p", "server": "S"}'},
    )
    assert response.status_code == 409
    assert response.json()["error"] == "needs_provisioning"
    assert not await pool.fetchval(
        "SELECT EXISTS (SELECT 1 FROM mt5_credentials WHERE connection_id = $1 AND kind = $2)",
        trader.mt5,
        BROKER_CREDENTIALS,
    )


async def test_blank_credentials_are_a_422_that_does_not_quote_them(
    api: RunningApi, pool: asyncpg.Pool, vault: CredentialVault, trader: Trader
) -> None:
    oanda = await polled(pool, vault, trader)
    response = await api.client.put(
        f"/v1/connections/{oanda}/credentials", headers=trader.headers, json={"credentials": "   "}
    )
    assert response.status_code == 422
    assert [f["path"] for f in response.json()["fields"]] == ["body.credentials"]


# --- Delete -----------------------------------------------------------------------------------


@dataclass
class FakeTerminals:
    """A terminal service that records what it removed, or cannot be reached."""

    provider: str = "metaapi"
    removed: list[str] = field(default_factory=list)
    reachable: bool = True

    async def remove(self, account_id: str) -> None:
        if not self.reachable:
            raise ProvisioningUnavailable("unreachable", "the service does not answer")
        self.removed.append(account_id)


async def _with_terminal(pool: asyncpg.Pool, trader: Trader) -> str:
    remote = f"metaapi-{uuid.uuid4().hex[:10]}"
    await pool.execute(
        "INSERT INTO cloud_terminals (connection_id, user_id, provider, transaction_id,"
        " remote_account_id, ready_at) VALUES ($1, $2, 'metaapi', $3, $4, now())",
        trader.mt5,
        trader.user_id,
        uuid.uuid4().hex,
        remote,
    )
    return remote


async def test_a_deleted_connection_s_credentials_are_destroyed_and_it_is_then_missing(
    api: RunningApi, pool: asyncpg.Pool, vault: CredentialVault, trader: Trader
) -> None:
    oanda = await polled(pool, vault, trader)
    response = await api.client.delete(f"/v1/connections/{oanda}", headers=trader.headers)
    assert response.status_code == 200, response.text
    assert response.json()["credentials_destroyed"] == 2  # its webhook secret and token
    assert response.json()["terminal_removed"] is False
    assert not await pool.fetchval(
        "SELECT EXISTS (SELECT 1 FROM mt5_credentials WHERE connection_id = $1)", oanda
    )
    gone = await api.client.get(f"/v1/connections/{oanda}", headers=trader.headers)
    missing = await api.client.get(f"/v1/connections/{uuid.uuid4()}", headers=trader.headers)
    assert (gone.status_code, gone.content) == (404, missing.content)
    again = await api.client.delete(f"/v1/connections/{oanda}", headers=trader.headers)
    assert again.status_code == 404


async def test_a_connection_s_cloud_terminal_is_removed_at_its_service_before_it_is_deleted(
    api: RunningApi, pool: asyncpg.Pool, trader: Trader
) -> None:
    remote = await _with_terminal(pool, trader)
    service = FakeTerminals()
    api.wiring.controls = dataclasses.replace(
        api.wiring.controls,
        terminals=lambda _broker: service,  # type: ignore[arg-type,return-value]
    )
    response = await api.client.delete(f"/v1/connections/{trader.mt5}", headers=trader.headers)
    assert response.status_code == 200, response.text
    assert response.json()["terminal_removed"] is True
    assert service.removed == [remote]
    assert not await pool.fetchval(
        "SELECT EXISTS (SELECT 1 FROM cloud_terminals WHERE connection_id = $1)", trader.mt5
    )


async def test_a_terminal_service_that_cannot_remove_it_now_leaves_everything_as_it_was(
    api: RunningApi, pool: asyncpg.Pool, trader: Trader
) -> None:
    await _with_terminal(pool, trader)
    service = FakeTerminals(reachable=False)
    api.wiring.controls = dataclasses.replace(
        api.wiring.controls,
        terminals=lambda _broker: service,  # type: ignore[arg-type,return-value]
    )
    response = await api.client.delete(f"/v1/connections/{trader.mt5}", headers=trader.headers)
    assert response.status_code == 503
    assert response.json()["error"] == "terminal_unreachable"
    assert "retry-after" in response.headers
    still = await api.client.get(f"/v1/connections/{trader.mt5}", headers=trader.headers)
    assert still.status_code == 200
    assert (
        await pool.fetchval(
            "SELECT count(*) FROM mt5_credentials WHERE connection_id = $1", trader.mt5
        )
        == 1
    )


async def test_credentials_of_fields_are_checked_for_the_broker_and_never_quoted(
    api: RunningApi, pool: asyncpg.Pool, vault: CredentialVault, trader: Trader
) -> None:
    async with pool.acquire() as conn:
        ibkr = await connect_broker_account(
            conn, vault, trader.user_id, "ibkr", f"U{uuid.uuid4().int % 10**7}"
        )
    path = f"/v1/connections/{ibkr.connection_id}/credentials"
    secret = "31415926535897932384" + "6" * 4
    wrong = await api.client.put(
        path, headers=trader.headers, json={"credentials": f'{{"token": "{secret}"}}'}
    )
    assert wrong.status_code == 422
    [problem] = wrong.json()["fields"]
    assert problem["path"] == "body.credentials" and "query_id" in problem["message"]
    assert secret not in wrong.text
    right = await api.client.put(
        path,
        headers=trader.headers,
        json={"credentials": f'{{"query_id": "123456", "token": "{secret}"}}'},
    )
    assert right.status_code == 200, right.text
    async with pool.acquire() as conn:
        [sealed] = await vault.open_active(
            conn, ibkr.connection_id, BROKER_CREDENTIALS, datetime.now(UTC)
        )
    assert orjson.loads(sealed) == {"token": secret, "query_id": "123456"}
