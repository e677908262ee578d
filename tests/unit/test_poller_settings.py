"""The poller's settings: one per-user sync limit, read once; metrics served only when asked."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from services.poller.settings import PollerSettings
from services.shared.sync_limits import UserSyncLimit


@pytest.fixture(autouse=True)
def _no_poller_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "POSCAL_SYNC_RATE_PER_USER",
        "POSCAL_POLLER_METRICS_PORT",
        "POSCAL_POLLER_METRICS_HOST",
    ):
        monkeypatch.delenv(name, raising=False)


def test_a_per_user_rate_is_read_as_an_amount_per_window_in_seconds() -> None:
    assert UserSyncLimit.parse("30/minute") == UserSyncLimit(amount=30, window_seconds=60)
    assert UserSyncLimit.parse("5 per 10 seconds") == UserSyncLimit(amount=5, window_seconds=10)
    assert PollerSettings().user_sync_limit == UserSyncLimit(amount=30, window_seconds=60)


@pytest.mark.parametrize("rate", ["lots per hour", "1/second;30/minute"])
def test_a_per_user_rate_that_is_not_exactly_one_limit_is_refused(rate: str) -> None:
    with pytest.raises(ValidationError):
        PollerSettings(sync_rate_per_user=rate)


def test_metrics_are_off_unless_a_port_is_set_and_then_bound_to_localhost(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert PollerSettings().metrics_port is None
    monkeypatch.setenv("POSCAL_POLLER_METRICS_PORT", "9464")
    settings = PollerSettings()
    assert (settings.metrics_host, settings.metrics_port) == ("127.0.0.1", 9464)
