"""Looks up a webhook's connection and its verification keys (decrypted only in memory)."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg

from services.shared.envelope import ConnectionRef
from services.shared.vault import CredentialVault

WEBHOOK_SECRET_KIND = "webhook_secret"  # noqa: S105 - a credential kind, not a secret
_ACCEPTING = ("active", "error")


@dataclass(frozen=True)
class VerifiableConnection:
    ref: ConnectionRef
    keys: tuple[bytes, ...]

    def __repr__(self) -> str:  # never print keys
        return f"VerifiableConnection({self.ref.connection_id}, {len(self.keys)} keys)"


class ConnectionDirectory:
    """Connections that may deliver webhooks, cached briefly (misses too, against id spraying)."""

    def __init__(self, pool: asyncpg.Pool, vault: CredentialVault, ttl_seconds: float) -> None:
        self._pool = pool
        self._vault = vault
        self._ttl = ttl_seconds
        self._cache: dict[uuid.UUID, tuple[float, VerifiableConnection | None]] = {}

    async def find(self, connection_id: uuid.UUID) -> VerifiableConnection | None:
        now = time.monotonic()
        cached = self._cache.get(connection_id)
        if cached is not None and cached[0] > now:
            return cached[1]
        found = await self._load(connection_id)
        if len(self._cache) > 100_000:
            self._cache.clear()
        self._cache[connection_id] = (now + self._ttl, found)
        return found

    async def _load(self, connection_id: uuid.UUID) -> VerifiableConnection | None:
        async with self._pool.acquire() as conn:
            row = await conn.fetchrow(
                "SELECT id, user_id, account_id, broker, connection_type, account_number, server"
                " FROM mt5_connections WHERE id = $1 AND status = ANY($2::text[])",
                connection_id,
                list(_ACCEPTING),
            )
            if row is None:
                return None
            keys = await self._vault.open_active(
                conn, connection_id, WEBHOOK_SECRET_KIND, datetime.now(UTC)
            )
        ref = ConnectionRef(
            connection_id=row["id"],
            user_id=row["user_id"],
            account_id=row["account_id"],
            broker=row["broker"],
            connection_type=row["connection_type"],
            account_number=row["account_number"],
            server=row["server"] or None,
        )
        return VerifiableConnection(ref, tuple(keys))
