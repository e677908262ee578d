"""Token buckets in a process's memory, one per key, for limits written in the `limits` syntax
(`120/minute;10/second`): what every rate limit and refusal budget of the services counts with."""

from __future__ import annotations

import math
import time
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

    def wait(self, tokens: float, needed: float = 1) -> int:
        return max(1, math.ceil((needed - tokens) / self.per_second))


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

    @property
    def capacity(self) -> float:
        """The most tokens one spend can ever take (the smallest limit's amount)."""
        return min(limit.capacity for limit in self._limits)

    def wait(self, key: Hashable, tokens: float = 1) -> int | None:
        """Seconds until `tokens` more fit, or None if they fit now (nothing is taken)."""
        now = self._clock()
        for index, limit in enumerate(self._limits):
            bucket = self._refilled(key, index, limit, now)
            if bucket.tokens < tokens:
                return limit.wait(bucket.tokens, tokens)
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
