"""Webhook rate limits: per connection and per user, a refusal says how long to wait and
consumes nothing."""

from __future__ import annotations

import uuid

from services.ingest.rate_limits import WebhookRateLimits

USER, OTHER_USER = uuid.uuid4(), uuid.uuid4()


def test_a_connection_is_refused_past_its_limit_with_a_wait_in_seconds() -> None:
    limits = WebhookRateLimits("2/minute", "100/minute")
    connection = uuid.uuid4()
    assert limits.take(connection, USER) is None
    assert limits.take(connection, USER) is None
    refused = limits.take(connection, USER)
    assert refused is not None
    reason, wait = refused
    assert reason == "rate_limited_connection" and 1 <= wait <= 60


def test_one_connection_over_its_limit_leaves_the_others_alone() -> None:
    limits = WebhookRateLimits("1/minute", "100/minute")
    busy, quiet = uuid.uuid4(), uuid.uuid4()
    limits.take(busy, USER)
    assert limits.take(busy, USER) is not None
    assert limits.take(quiet, OTHER_USER) is None


def test_a_user_is_limited_across_all_their_connections() -> None:
    limits = WebhookRateLimits("100/minute", "2/minute")
    assert limits.take(uuid.uuid4(), USER) is None
    assert limits.take(uuid.uuid4(), USER) is None
    refused = limits.take(uuid.uuid4(), USER)
    assert refused is not None and refused[0] == "rate_limited_user"


def test_a_refused_delivery_uses_up_no_allowance() -> None:
    limits = WebhookRateLimits("100/minute", "1/minute")
    connection = uuid.uuid4()
    limits.take(connection, USER)
    for _ in range(5):
        assert limits.take(connection, USER) is not None
    other_user_same_connection_budget = limits.take(connection, OTHER_USER)
    assert other_user_same_connection_budget is None  # the connection's count went up once
