"""Ingest refuses settings that would weaken it, and says which."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from services.ingest.settings import IngestSettings

KEY = "A" * 43 + "="


def test_a_replay_window_shorter_than_the_signature_tolerance_is_refused() -> None:
    with pytest.raises(ValidationError, match="POSCAL_SIGNATURE_TOLERANCE_SECONDS"):
        IngestSettings(master_key=KEY, signature_tolerance_seconds=2 * 86400, replay_window_days=1)


@pytest.mark.parametrize(
    "field", ["rate_limit_per_connection", "rate_limit_per_user", "refusals_per_client"]
)
def test_a_rate_that_does_not_parse_is_refused(field: str) -> None:
    with pytest.raises(ValidationError, match="couldn't parse rate limit"):
        IngestSettings.model_validate({"master_key": KEY, field: "lots per hour"})


def test_a_trusted_proxy_that_is_no_address_is_refused() -> None:
    with pytest.raises(ValidationError, match="not an IP address"):
        IngestSettings(master_key=KEY, trusted_proxies="10.0.0.0/8, proxy.internal")


def test_a_claim_lease_no_longer_than_a_publish_is_refused() -> None:
    with pytest.raises(ValidationError, match="POSCAL_CLAIM_LEASE_SECONDS"):
        IngestSettings(master_key=KEY, publish_timeout_seconds=5, claim_lease_seconds=5)


def test_a_claim_lease_outlives_two_publishes_unless_set() -> None:
    assert IngestSettings(master_key=KEY, publish_timeout_seconds=3).claim_lease == 16
    assert IngestSettings(master_key=KEY, claim_lease_seconds=12).claim_lease == 12


def test_the_old_lockout_threshold_still_sets_the_alert_threshold(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("POSCAL_LOCKOUT_THRESHOLD", "7")
    assert IngestSettings(master_key=KEY).failure_alert_threshold == 7
