"""Exponential backoff with full jitter, pure: the caller owns the clock and the sleeping."""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass
class Backoff:
    base_seconds: float = 0.2
    cap_seconds: float = 30.0
    attempt: int = 0
    _random: random.Random = field(default_factory=random.Random, repr=False)

    def next_delay(self) -> float:
        """The next wait: uniform in [0, min(cap, base * 2^attempt)]."""
        # The exponent stops growing once the cap is reached: an outage of any length (any
        # number of attempts) never overflows.
        ceiling = min(self.cap_seconds, self.base_seconds * (2.0 ** min(self.attempt, 64)))
        self.attempt += 1
        return self._random.uniform(0, ceiling)

    def reset(self) -> None:
        self.attempt = 0
