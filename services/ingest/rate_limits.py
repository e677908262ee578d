"""Webhook rate limits in this replica's memory: per connection and per user for verified
deliveries (token buckets of services/shared/token_buckets.py)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

from services.shared.token_buckets import TokenBuckets


class WebhookRateLimits:
    """Per connection and per user, for deliveries that verified. The limits are per replica:
    behind N replicas a sender may get up to N times the configured rate. A delivery over a
    limit, or one that turns out to deliver nothing (`give_back`: a replay, one in flight),
    consumes nothing of the sender's allowance."""

    def __init__(
        self, per_connection: str, per_user: str, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._per_connection = TokenBuckets(per_connection, clock)
        self._per_user = TokenBuckets(per_user, clock)

    def take(self, connection_id: uuid.UUID, user_id: uuid.UUID) -> tuple[str, int] | None:
        """Count one delivery, or say which limit it exceeds and how many seconds to wait."""
        wait = self._per_connection.wait(connection_id)
        if wait is not None:
            return "rate_limited_connection", wait
        wait = self._per_user.wait(user_id)
        if wait is not None:
            return "rate_limited_user", wait
        self._per_connection.spend(connection_id)
        self._per_user.spend(user_id)
        return None

    def give_back(self, connection_id: uuid.UUID, user_id: uuid.UUID) -> None:
        """Return what `take` counted for a delivery that turned out to deliver nothing."""
        self._per_connection.spend(connection_id, -1)
        self._per_user.spend(user_id, -1)
