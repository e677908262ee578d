"""Credentials are due for rotation by the age of the newest active one of each kind: a warning
after 60 days, due after 90; a forced-rotation mark outranks age and says why."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from services.shared.connection_admin.rotation import ActiveCredential, classify_rotation
from services.shared.credential_kinds import BROKER_CREDENTIALS, WEBHOOK_PUBLIC_KEY, WEBHOOK_SECRET

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)


def aged(
    kind: str, days: float, forced_at: datetime | None = None, reason: str | None = None
) -> ActiveCredential:
    return ActiveCredential(kind, NOW - timedelta(days=days), forced_at, reason)


def test_no_credentials_need_no_rotation() -> None:
    status = classify_rotation([], NOW)
    assert (status.rotation, status.reason, status.age_days) == ("ok", None, {})


@pytest.mark.parametrize(
    ("days", "rotation"),
    [
        (0, "ok"),
        (59.9, "ok"),
        (60, "ok"),
        (60.01, "warning"),
        (89.9, "warning"),
        (90, "warning"),
        (90.01, "due"),
        (400, "due"),
    ],
)
def test_a_credential_warns_after_60_days_and_is_due_after_90(days: float, rotation: str) -> None:
    assert classify_rotation([aged(WEBHOOK_SECRET, days)], NOW).rotation == rotation


def test_ages_are_whole_days_of_the_newest_credential_of_each_kind() -> None:
    status = classify_rotation(
        [aged(WEBHOOK_SECRET, 100.5), aged(WEBHOOK_SECRET, 1.2), aged(BROKER_CREDENTIALS, 61.9)],
        NOW,
    )
    assert status.age_days == {BROKER_CREDENTIALS: 61, WEBHOOK_SECRET: 1}


def test_an_old_secret_overlapping_its_fresh_replacement_does_not_count_as_due() -> None:
    status = classify_rotation([aged(WEBHOOK_SECRET, 120), aged(WEBHOOK_SECRET, 0)], NOW)
    assert status.rotation == "ok"


def test_the_oldest_kind_decides_and_the_reason_names_the_old_kinds() -> None:
    status = classify_rotation(
        [aged(WEBHOOK_SECRET, 10), aged(BROKER_CREDENTIALS, 95), aged(WEBHOOK_PUBLIC_KEY, 70)],
        NOW,
    )
    assert (status.rotation, status.reason) == ("due", "broker_credentials older than 90 days")

    status = classify_rotation([aged(WEBHOOK_SECRET, 61), aged(WEBHOOK_PUBLIC_KEY, 70)], NOW)
    assert (status.rotation, status.reason) == (
        "warning",
        "webhook_public_key, webhook_secret older than 60 days",
    )


def test_a_forced_rotation_mark_outranks_age_and_gives_its_reason() -> None:
    marked = aged(
        WEBHOOK_SECRET,
        1,
        forced_at=NOW - timedelta(hours=1),
        reason="lockout: 10 consecutive signature failures",
    )
    status = classify_rotation([marked, aged(BROKER_CREDENTIALS, 200)], NOW)
    assert (status.rotation, status.reason) == (
        "forced",
        "lockout: 10 consecutive signature failures",
    )


def test_a_mark_on_any_active_credential_forces_rotation_even_if_not_the_newest() -> None:
    marked = aged(WEBHOOK_SECRET, 5, forced_at=NOW - timedelta(days=1))
    status = classify_rotation([marked, aged(WEBHOOK_SECRET, 0)], NOW)
    assert (status.rotation, status.reason) == ("forced", "forced")


def test_the_latest_mark_gives_the_reason() -> None:
    first = aged(
        WEBHOOK_SECRET,
        3,
        forced_at=NOW - timedelta(days=2),
        reason="first",
    )
    latest = aged(
        BROKER_CREDENTIALS,
        3,
        forced_at=NOW - timedelta(days=1),
        reason="latest",
    )
    assert classify_rotation([latest, first], NOW).reason == "latest"
