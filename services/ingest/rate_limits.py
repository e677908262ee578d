"""Per-connection and per-user webhook rate limits, in this replica's memory.

Token buckets: a limit of N per window holds up to N tokens and refills N per window, so a
sender may burst to the limit and then keeps to the rate. The limits are per replica: behind N
replicas a sender may get up to N times the configured rate. A refused delivery consumes nothing.

Written out here (not with `limits`' in-memory storage) because this runs on every webhook: a
few dictionary operations, no locks, no expiry threads.
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from limits import parse_many


@dataclass
class _Bucket:
    tokens: float
    updated: float


@dataclass(frozen=True)
class _Limit:
    capacity: float
    per_second: float

    def refilled(self, bucket: _Bucket, now: float) -> float:
        return min(self.capacity, bucket.tokens + (now - bucket.updated) * self.per_second)


def _limits(spec: str) -> tuple[_Limit, ...]:
    """`120/minute;10/second` (the `limits` syntax) as buckets."""
    return tuple(
        _Limit(capacity=item.amount, per_second=item.amount / item.get_expiry())
        for item in parse_many(spec)
    )


class WebhookRateLimits:
    _MAX_BUCKETS = 200_000

    def __init__(
        self,
        per_connection: str,
        per_user: str,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._per_connection = _limits(per_connection)
        self._per_user = _limits(per_user)
        self._clock = clock
        self._buckets: dict[tuple[str, uuid.UUID, int], _Bucket] = {}

    def take(self, connection_id: uuid.UUID, user_id: uuid.UUID) -> tuple[str, int] | None:
        """Count one delivery, or say which limit it exceeds and how many seconds to wait."""
        now = self._clock()
        checks = [
            *(
                ("rate_limited_connection", connection_id, i, limit)
                for i, limit in enumerate(self._per_connection)
            ),
            *(("rate_limited_user", user_id, i, limit) for i, limit in enumerate(self._per_user)),
        ]
        buckets = []
        for reason, owner, index, limit in checks:
            bucket = self._bucket((reason, owner, index), limit, now)
            bucket.tokens = limit.refilled(bucket, now)
            bucket.updated = now
            if bucket.tokens < 1:
                return reason, max(1, math.ceil((1 - bucket.tokens) / limit.per_second))
            buckets.append(bucket)
        for bucket in buckets:
            bucket.tokens -= 1
        return None

    def _bucket(self, key: tuple[str, uuid.UUID, int], limit: _Limit, now: float) -> _Bucket:
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self._MAX_BUCKETS:
                self._forget_full_buckets(now)
            bucket = self._buckets[key] = _Bucket(limit.capacity, now)
        return bucket

    def _forget_full_buckets(self, now: float) -> None:
        """Buckets idle long enough to be full again are the same as new ones: drop them."""
        limits = {
            "rate_limited_connection": self._per_connection,
            "rate_limited_user": self._per_user,
        }
        self._buckets = {
            key: bucket
            for key, bucket in self._buckets.items()
            if limits[key[0]][key[2]].refilled(bucket, now) < limits[key[0]][key[2]].capacity
        }
