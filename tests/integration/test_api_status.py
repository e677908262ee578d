"""A connection's status and sync history as the app API answers them, from what the poller,
ingest and the writer recorded: state, last sync, recent errors, failures in a row, credential
rotation (warning after 60 days, due after 90, or forced), and the history page by page."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from services.shared.credential_kinds import WEBHOOK_SECRET
from services.shared.vault import CredentialVault
from tests.support.api import RunningApi, api_settings, bearer, hs256, running_api
from tests.support.builders import connect_broker_account, new_connection

pytestmark = pytest.mark.integration


@pytest.fixture
async def api(pool: asyncpg.Pool, database_url: str) -> AsyncIterator[RunningApi]:
    async with running_api(api_settings(database_url), pool) as running:
        yield running


@pytest.fixture
async def mt5(pool: asyncpg.Pool, vault: CredentialVault) -> tuple[uuid.UUID, uuid.UUID]:
    async with pool.acquire() as conn:
        created = await new_connection(conn, vault)
    return created.user_id, created.created.connection_id


async def _status(api: RunningApi, user_id: uuid.UUID, connection_id: uuid.UUID) -> dict:  # type: ignore[type-arg]
    response = await api.client.get(
        f"/v1/connections/{connection_id}/status", headers=bearer(hs256(user_id))
    )
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


async def test_a_new_connection_is_active_idle_and_its_secret_is_fresh(
    api: RunningApi, mt5: tuple[uuid.UUID, uuid.UUID]
) -> None:
    status = await _status(api, *mt5)
    assert (status["lifecycle"], status["status"], status["polled"]) == ("active", "idle", False)
    assert status["last_sync_at"] is None and status["recent_errors"] == []
    assert status["rotation"]["state"] == "ok"
    assert status["rotation"]["credentials_age_days"] == {WEBHOOK_SECRET: 0}


@pytest.mark.parametrize(("days", "state"), [(59, "ok"), (61, "warning"), (91, "due")])
async def test_rotation_is_a_warning_after_60_days_and_due_after_90(
    api: RunningApi, pool: asyncpg.Pool, mt5: tuple[uuid.UUID, uuid.UUID], days: int, state: str
) -> None:
    await pool.execute(
        "UPDATE mt5_credentials SET last_rotated_at = now() - make_interval(days => $2)"
        " WHERE connection_id = $1",
        mt5[1],
        days,
    )
    rotation = (await _status(api, *mt5))["rotation"]
    assert rotation["state"] == state
    assert rotation["credentials_age_days"] == {WEBHOOK_SECRET: days}


async def test_rotation_is_forced_by_a_mark_whatever_the_age(
    api: RunningApi, pool: asyncpg.Pool, mt5: tuple[uuid.UUID, uuid.UUID]
) -> None:
    await pool.execute(
        "UPDATE mt5_credentials SET rotation_forced_at = now(),"
        " rotation_forced_reason = 'verification_failures' WHERE connection_id = $1",
        mt5[1],
    )
    rotation = (await _status(api, *mt5))["rotation"]
    assert (rotation["state"], rotation["reason"]) == ("forced", "verification_failures")


async def test_poll_failures_and_refused_webhooks_are_the_recent_errors_newest_first(
    api: RunningApi, pool: asyncpg.Pool, vault: CredentialVault
) -> None:
    async with pool.acquire() as conn:
        user_id = (await new_connection(conn, vault)).user_id
        oanda = await connect_broker_account(
            conn, vault, user_id, "oanda", f"101-004-{uuid.uuid4().int % 10**7}-001"
        )
    connection_id = oanda.connection_id
    # As the poller records two failures in a row (each a new last_error_at).
    for failures, message in ((1, "broker unreachable"), (2, "broker timed out")):
        await pool.execute(
            "UPDATE sync_schedule SET consecutive_failures = $2, last_error = $3,"
            " last_error_at = clock_timestamp() WHERE connection_id = $1",
            connection_id,
            failures,
            message,
        )
    await pool.execute(
        "INSERT INTO webhook_attempts (connection_id, user_id, broker, outcome, status_code,"
        " reason, received_at) VALUES ($1, $2, 'oanda', 'refused', 401, 'bad_signature',"
        " clock_timestamp())",
        connection_id,
        user_id,
    )
    status = await _status(api, user_id, connection_id)
    assert status["consecutive_failures"] == 2
    assert status["sync_state"] == "waiting_for_credentials"
    assert [(e["source"], e["message"]) for e in status["recent_errors"]] == [
        ("webhook", "HTTP 401: bad_signature"),
        ("poll", "broker timed out"),
        ("poll", "broker unreachable"),
    ]


async def _synced(
    pool: asyncpg.Pool, user_id: uuid.UUID, connection_id: uuid.UUID, at: datetime
) -> None:
    await pool.execute(
        "INSERT INTO sync_events (event_id, connection_id, user_id, source, received_at,"
        " fills_received, fills_inserted, cash_received, cash_inserted, positions_touched,"
        " balance_applied, recorded_at)"
        " VALUES ($1, $2, $3, 'webhook', $4, 3, 2, 0, 0, 1, true, $4)",
        uuid.uuid4(),
        connection_id,
        user_id,
        at,
    )


async def test_the_history_walks_every_sync_and_failure_once_newest_first(
    api: RunningApi, pool: asyncpg.Pool, mt5: tuple[uuid.UUID, uuid.UUID]
) -> None:
    user_id, connection_id = mt5
    start = datetime(2026, 1, 5, 12, tzinfo=UTC)
    for minutes in range(5):
        await _synced(pool, user_id, connection_id, start + timedelta(minutes=minutes))
    # Two at the same instant: the id breaks the tie, so neither is skipped nor repeated.
    await _synced(pool, user_id, connection_id, start + timedelta(minutes=2))
    seen: list[dict] = []  # type: ignore[type-arg]
    cursor: str | None = None
    headers = bearer(hs256(user_id))
    while True:
        query = "?limit=2" + (f"&cursor={cursor}" if cursor else "")
        page = await api.client.get(
            f"/v1/connections/{connection_id}/history{query}", headers=headers
        )
        assert page.status_code == 200, page.text
        seen += page.json()["entries"]
        cursor = page.json()["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == 6 and len({e["id"] for e in seen}) == 6
    assert [e["at"] for e in seen] == sorted((e["at"] for e in seen), reverse=True)
    assert {(e["outcome"], e["fills_received"], e["fills_inserted"]) for e in seen} == {
        ("synced", 3, 2)
    }


async def test_a_failed_poll_is_in_the_history(
    api: RunningApi, pool: asyncpg.Pool, vault: CredentialVault
) -> None:
    async with pool.acquire() as conn:
        user_id = (await new_connection(conn, vault)).user_id
        oanda = await connect_broker_account(
            conn, vault, user_id, "oanda", f"101-004-{uuid.uuid4().int % 10**7}-001"
        )
    await pool.execute(
        "UPDATE sync_schedule SET consecutive_failures = 1, last_error = 'broker unreachable',"
        " last_error_at = now() WHERE connection_id = $1",
        oanda.connection_id,
    )
    page = await api.client.get(
        f"/v1/connections/{oanda.connection_id}/history", headers=bearer(hs256(user_id))
    )
    [entry] = page.json()["entries"]
    assert (entry["outcome"], entry["source"], entry["error"]) == (
        "failed",
        "poller",
        "broker unreachable",
    )


async def test_a_history_cursor_not_handed_out_is_a_422(
    api: RunningApi, mt5: tuple[uuid.UUID, uuid.UUID]
) -> None:
    user_id, connection_id = mt5
    response = await api.client.get(
        f"/v1/connections/{connection_id}/history?cursor=nonsense", headers=bearer(hs256(user_id))
    )
    assert response.status_code == 422
    assert [f["path"] for f in response.json()["fields"]] == ["query.cursor"]


async def test_only_the_newest_hundred_poll_errors_of_a_connection_are_kept(
    pool: asyncpg.Pool, vault: CredentialVault
) -> None:
    async with pool.acquire() as conn:
        user_id = (await new_connection(conn, vault)).user_id
        oanda = await connect_broker_account(
            conn, vault, user_id, "oanda", f"101-004-{uuid.uuid4().int % 10**7}-001"
        )
        for failure in range(1, 106):
            await conn.execute(
                "UPDATE sync_schedule SET consecutive_failures = $2, last_error = $3,"
                " last_error_at = clock_timestamp() WHERE connection_id = $1",
                oanda.connection_id,
                failure,
                f"failure {failure}",
            )
        kept = await conn.fetch(
            "SELECT consecutive_failures FROM sync_errors WHERE connection_id = $1"
            " ORDER BY occurred_at",
            oanda.connection_id,
        )
    assert [r["consecutive_failures"] for r in kept] == list(range(6, 106))


async def test_a_connection_not_yet_reconciled_has_no_reconciliation(
    api: RunningApi, mt5: tuple[uuid.UUID, uuid.UUID]
) -> None:
    assert (await _status(api, *mt5))["reconciliation"] is None


async def test_the_last_reconciliation_shows_its_result_and_gaps(
    api: RunningApi, pool: asyncpg.Pool, mt5: tuple[uuid.UUID, uuid.UUID]
) -> None:
    user_id, connection_id = mt5
    reconciled_at = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
    await pool.execute(
        "INSERT INTO connection_reconciliations (connection_id, user_id, last_reconciled_at,"
        " result, balance_drift, next_due_at)"
        " VALUES ($1, $2, $3, 'gaps', -0.01, $3::timestamptz + interval '6 hours')",
        connection_id,
        user_id,
        reconciled_at,
    )
    reconciliation = (await _status(api, user_id, connection_id))["reconciliation"]
    assert reconciliation == {
        "last_reconciled_at": "2026-11-30T12:00:00Z",
        "next_due_at": "2026-11-30T18:00:00Z",
        "result": "gaps",
        "gaps": ["balance_drift"],
        "missing_deals": 0,
        "fetched_deals": 0,
        "balance_drift": "-0.01",
        "error": None,
    }


async def test_a_reconciliation_that_could_not_compare_says_why(
    api: RunningApi, pool: asyncpg.Pool, mt5: tuple[uuid.UUID, uuid.UUID]
) -> None:
    user_id, connection_id = mt5
    await pool.execute(
        "INSERT INTO connection_reconciliations (connection_id, user_id, last_reconciled_at,"
        " result, detail) VALUES ($1, $2, now(), 'failed', $3::jsonb)",
        connection_id,
        user_id,
        {"error": "the broker refused the credentials"},
    )
    reconciliation = (await _status(api, user_id, connection_id))["reconciliation"]
    assert (reconciliation["result"], reconciliation["gaps"]) == ("failed", [])
    assert reconciliation["error"] == "the broker refused the credentials"
    assert reconciliation["balance_drift"] is None
