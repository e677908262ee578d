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


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_wait_is_the_time_until_the_next_delivery_fits_and_then_it_does() -> None:
    clock = Clock()
    limits = WebhookRateLimits("6/minute", "100/minute", clock=clock)
    connection = uuid.uuid4()
    for _ in range(6):
        assert limits.take(connection, USER) is None
    refused = limits.take(connection, USER)
    assert refused == ("rate_limited_connection", 10)  # one delivery's worth refills in 10 s
    clock.now += 10
    assert limits.take(connection, USER) is None
    assert limits.take(connection, USER) is not None


def test_several_limits_on_one_scope_all_apply() -> None:
    clock = Clock()
    limits = WebhookRateLimits("2/second;3/minute", "100/minute", clock=clock)
    connection = uuid.uuid4()
    assert [limits.take(connection, USER) is None for _ in range(3)] == [True, True, False]
    clock.now += 1
    assert limits.take(connection, USER) is None  # the second's bucket refilled...
    assert limits.take(connection, USER) is not None  # ...the minute's has not
