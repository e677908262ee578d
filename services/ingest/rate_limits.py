"""Per-connection and per-user webhook rate limits, in this replica's memory.

Sliding-window counters (constant memory per key). The limits are per replica: behind N replicas
a sender may get up to N times the configured rate. A refused delivery consumes nothing.
"""

from __future__ import annotations

import math
import time
import uuid

from limits import RateLimitItem, parse_many
from limits.storage import MemoryStorage
from limits.strategies import SlidingWindowCounterRateLimiter


class WebhookRateLimits:
    def __init__(self, per_connection: str, per_user: str) -> None:
        self._limiter = SlidingWindowCounterRateLimiter(MemoryStorage())
        self._per_connection = parse_many(per_connection)
        self._per_user = parse_many(per_user)

    def _checks(
        self, connection_id: uuid.UUID, user_id: uuid.UUID
    ) -> list[tuple[str, RateLimitItem, str]]:
        return [
            *(
                ("rate_limited_connection", item, str(connection_id))
                for item in self._per_connection
            ),
            *(("rate_limited_user", item, str(user_id)) for item in self._per_user),
        ]

    def take(self, connection_id: uuid.UUID, user_id: uuid.UUID) -> tuple[str, int] | None:
        """Count one delivery, or say which limit it exceeds and how many seconds to wait."""
        checks = self._checks(connection_id, user_id)
        for reason, item, key in checks:
            if not self._limiter.test(item, reason, key):
                reset_at = self._limiter.get_window_stats(item, reason, key).reset_time
                return reason, max(1, math.ceil(reset_at - time.time()))
        for reason, item, key in checks:
            self._limiter.hit(item, reason, key)
        return None
