"""Webhook rate limits in this replica's memory: per connection and per user for verified
deliveries, and the token buckets behind the refusal budgets too (client_refusals.py)."""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Callable, Hashable
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

    def wait(self, tokens: float) -> int:
        return max(1, math.ceil((1 - tokens) / self.per_second))


class TokenBuckets:
    """One set of limits (`120/minute;10/second`, the `limits` syntax), a bucket per key.

    A limit of N per window holds up to N tokens and refills N per window, so a sender may
    burst to the limit and then keeps to the rate. Written out here (not with `limits`'
    in-memory storage) because this runs on every webhook: a few dictionary operations, no
    locks, no expiry threads. `limits` still parses the settings."""

    _MAX_BUCKETS = 200_000

    def __init__(self, spec: str, clock: Callable[[], float] = time.monotonic) -> None:
        self._limits = tuple(
            _Limit(capacity=item.amount, per_second=item.amount / item.get_expiry())
            for item in parse_many(spec)
        )
        self._clock = clock
        self._buckets: dict[tuple[Hashable, int], _Bucket] = {}

    def wait(self, key: Hashable) -> int | None:
        """Seconds until one more fits, or None if it fits now (nothing is taken)."""
        now = self._clock()
        for index, limit in enumerate(self._limits):
            bucket = self._refilled(key, index, limit, now)
            if bucket.tokens < 1:
                return limit.wait(bucket.tokens)
        return None

    def spend(self, key: Hashable, tokens: float = 1) -> None:
        """Take (or with a negative amount, give back) tokens, whatever is left."""
        now = self._clock()
        for index, limit in enumerate(self._limits):
            bucket = self._refilled(key, index, limit, now)
            bucket.tokens = min(limit.capacity, bucket.tokens - tokens)

    def _refilled(self, key: Hashable, index: int, limit: _Limit, now: float) -> _Bucket:
        bucket = self._buckets.get((key, index))
        if bucket is None:
            if len(self._buckets) >= self._MAX_BUCKETS:
                self._forget_full(now)
            bucket = self._buckets[(key, index)] = _Bucket(limit.capacity, now)
        bucket.tokens = limit.refilled(bucket, now)
        bucket.updated = now
        return bucket

    def _forget_full(self, now: float) -> None:
        """Buckets idle long enough to be full again are the same as new ones: drop them."""
        self._buckets = {
            key: bucket
            for key, bucket in self._buckets.items()
            if self._limits[key[1]].refilled(bucket, now) < self._limits[key[1]].capacity
        }


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
