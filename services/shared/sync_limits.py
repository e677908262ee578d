"""How often one user's connections may sync: the poller leases within it, and the app API's
"sync now" refuses past it, so both count the same syncs the same way."""

from __future__ import annotations

from dataclasses import dataclass

from limits import parse_many


@dataclass(frozen=True)
class UserSyncLimit:
    """At most `amount` syncs of one user's connections per `window_seconds`, across replicas."""

    amount: int
    window_seconds: int

    @classmethod
    def parse(cls, rate: str) -> UserSyncLimit:
        """From `limits` syntax ("30/minute"); one limit only. ValueError if unreadable."""
        items = parse_many(rate)
        if len(items) != 1:
            raise ValueError(f"one per-user sync limit, not {len(items)}: {rate!r}")
        return cls(amount=items[0].amount, window_seconds=items[0].get_expiry())
