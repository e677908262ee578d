"""The gauges the poller reads from Postgres: connections due (and leasable), leased, failing and
the longest failure run per broker, credentials whose rotation is needed per kind and state (as
`connections list --rotation-due` classifies them), and data keys not under the current KEK.
The database is shared with other specs, so each spec compares with a reading before it."""

from __future__ import annotations

import asyncpg
import pytest

from services.poller.gauges import PollerGauges
from services.poller.schedule import SyncSchedule
from services.shared import credential_kinds
from services.shared.vault import CredentialVault
from tests.support.metrics import sample
from tests.support.polling import polled

pytestmark = pytest.mark.integration


def gauges(pool: asyncpg.Pool, kek_id: str = "the-current-kek") -> PollerGauges:
    return PollerGauges(pool, SyncSchedule(pool, "gauges-spec", 60), kek_id, every_seconds=60)


def schedule(broker: str) -> dict[str, float]:
    return {
        name: sample(f"poscal_poller_{name}", broker=broker)
        for name in (
            "connections_due",
            "connections_leased",
            "connections_failing",
            "max_consecutive_failures",
        )
    }


async def test_due_leased_and_failing_connections_are_counted_per_broker(
    pool: asyncpg.Pool, vault: CredentialVault
) -> None:
    await gauges(pool).read()
    before = schedule("mt5")
    _, failing, leased, unscheduled = [await polled(pool, vault) for _ in range(4)]
    await pool.execute(
        "UPDATE sync_schedule SET consecutive_failures = 7 WHERE connection_id = $1",
        failing.created.connection_id,
    )
    await pool.execute(
        "UPDATE sync_schedule SET lease_owner = 'elsewhere', lease_token = gen_random_uuid(),"
        " lease_until = now() + interval '1 minute' WHERE connection_id = $1",
        leased.created.connection_id,
    )
    # Revoked credentials: not leasable, so not due (it waits for credentials).
    await pool.execute(
        "UPDATE mt5_credentials SET revoked_at = now() WHERE connection_id = $1 AND kind = $2",
        unscheduled.created.connection_id,
        credential_kinds.BROKER_CREDENTIALS,
    )
    await gauges(pool).read()
    after = schedule("mt5")
    assert after["connections_due"] - before["connections_due"] == 2  # the first two
    assert after["connections_leased"] - before["connections_leased"] == 1
    assert after["connections_failing"] - before["connections_failing"] == 1
    assert after["max_consecutive_failures"] >= 7


async def test_credentials_needing_rotation_are_counted_by_kind_and_state(
    pool: asyncpg.Pool, vault: CredentialVault
) -> None:
    def needed(kind: str, state: str) -> float:
        return sample("poscal_credentials_rotation_needed", kind=kind, state=state)

    await gauges(pool).read()
    before = {
        (kind, state): needed(kind, state)
        for kind in (credential_kinds.WEBHOOK_SECRET, credential_kinds.BROKER_CREDENTIALS)
        for state in ("warning", "due", "forced")
    }
    old, older, forced = [await polled(pool, vault) for _ in range(3)]
    for connection, days in ((old, 70), (older, 100)):
        await pool.execute(
            "UPDATE mt5_credentials SET last_rotated_at = now() - make_interval(days => $2)"
            " WHERE connection_id = $1 AND kind = $3",
            connection.created.connection_id,
            days,
            credential_kinds.WEBHOOK_SECRET,
        )
    await pool.execute(
        "UPDATE mt5_credentials SET rotation_forced_at = now(), rotation_forced_reason = 'spec'"
        " WHERE connection_id = $1 AND kind = $2",
        forced.created.connection_id,
        credential_kinds.BROKER_CREDENTIALS,
    )
    await gauges(pool).read()
    changed = {key: needed(*key) - value for key, value in before.items() if needed(*key) != value}
    assert changed == {
        (credential_kinds.WEBHOOK_SECRET, "warning"): 1,
        (credential_kinds.WEBHOOK_SECRET, "due"): 1,
        (credential_kinds.BROKER_CREDENTIALS, "forced"): 1,
    }


async def test_data_keys_not_under_the_current_kek_are_counted(
    pool: asyncpg.Pool, vault: CredentialVault
) -> None:
    await polled(pool, vault)  # at least one data key
    [current] = {r["kek_id"] for r in await pool.fetch("SELECT kek_id FROM user_data_keys LIMIT 1")}
    await gauges(pool, kek_id=current).read()
    others = await pool.fetchval("SELECT count(*) FROM user_data_keys WHERE kek_id <> $1", current)
    assert sample("poscal_data_keys_not_under_current_kek") == others
    await gauges(pool, kek_id="a-kek-no-data-key-is-under").read()
    every = await pool.fetchval("SELECT count(*) FROM user_data_keys")
    assert sample("poscal_data_keys_not_under_current_kek") == every > others
