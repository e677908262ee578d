"""Whether this replica can answer users now: Postgres answers a round trip, and the JWKS (when
one is configured) has been fetched at least once, so tokens signed with its keys verify."""

from __future__ import annotations

from services.api.database import Database
from services.api.jwks import JwksKeys


class ApiReadiness:
    def __init__(self, db: Database, jwks: JwksKeys | None) -> None:
        self._db = db
        self._jwks = jwks

    async def __call__(self) -> bool:
        if self._jwks is not None and not self._jwks.fetched_once:
            return False
        return await self._db.answers()
