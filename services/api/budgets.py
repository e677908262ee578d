"""How much a user, and a client address failing to sign in, may ask of one replica: token
buckets in memory (services/shared/token_buckets.py), spent by what each route costs."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

from services.api.errors import ClientThrottled, RateLimited
from services.shared.token_buckets import TokenBuckets


class RequestBudgets:
    """Per user: each request spends its route's cost (`Operation.cost`), and one that does
    not fit is refused whole (429 with the wait) and spends nothing. Per client address: each
    request without a valid token spends one; past the budget such requests get 429 instead of
    401. A valid token is never refused by its address's budget (a NAT full of strangers
    cannot lock a user out), so the address budget only ever slows guessing."""

    def __init__(
        self,
        per_user: str,
        failures_per_client: str,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._users = TokenBuckets(per_user, clock)
        self._failures = TokenBuckets(failures_per_client, clock)

    @property
    def largest_cost(self) -> float:
        """A route may cost at most this, or no request of it could ever fit."""
        return self._users.capacity

    def spend(self, user_id: uuid.UUID, cost: int) -> None:
        """Spend `cost` of the user's budget, or raise RateLimited with the wait."""
        wait = self._users.wait(user_id, cost)
        if wait is not None:
            raise RateLimited(wait)
        self._users.spend(user_id, cost)

    def failed(self, source: str) -> None:
        """Count a request without a valid token from `source`; ClientThrottled once over."""
        wait = self._failures.wait(source)
        if wait is not None:
            raise ClientThrottled(wait)
        self._failures.spend(source)
