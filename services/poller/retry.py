"""When to try a failed sync again, pure: exponential in the failures so far, with jitter, and
never sooner than the broker asked (Retry-After); and after how many the connection is `error`."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FailurePolicy:
    """How failed syncs back off (`base_seconds` doubling up to `cap_seconds`) and how many in a
    row turn the connection's status to `error`, with an alert."""

    base_seconds: float
    cap_seconds: float
    failures_before_error: int


def retry_delay(
    failures: int,
    base_seconds: float,
    cap_seconds: float,
    jitter: float,
    retry_after: float | None = None,
) -> float:
    """`failures` counts this one (1 = first failure); `jitter` is uniform in [0, 1)."""
    ceiling = min(cap_seconds, base_seconds * 2.0 ** max(0, failures - 1))
    delay = ceiling * (0.5 + 0.5 * jitter)  # "equal jitter": never less than half the step
    return max(delay, retry_after or 0.0)
