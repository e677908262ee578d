"""Looks up a webhook's connection by its URL's path id, with its verification keys (decrypted
only in memory)."""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg

from services.ingest.database_calls import database_call
from services.shared import credential_kinds
from services.shared.crypto import DecryptionFailed
from services.shared.envelope import ConnectionRef
from services.shared.signatures import VerificationKeys
from services.shared.vault import CredentialVault

# Connections webhooks are verified for; one an operator locked, or its user paused, is answered
# 423 once a delivery verifies (paused with Retry-After: the sender keeps it and retries).
_VERIFIABLE = ("active", "locked", "paused")
_MAX_CACHED = 100_000


class UnreadableSecret(Exception):
    """A connection's stored webhook secret does not open: the master key is not the one it was
    sealed under, or the row was tampered with. Carries the connection id, never the secret."""

    def __init__(self, connection_id: uuid.UUID) -> None:
        super().__init__(f"the webhook secret of connection {connection_id} cannot be decrypted")
        self.connection_id = connection_id


@dataclass(frozen=True)
class VerifiableConnection:
    ref: ConnectionRef
    keys: VerificationKeys
    locked: bool = False
    # Its user paused it: deliveries wait with their sender until it is resumed.
    paused: bool = False
    # A live connection syncs only once `connections enable-live` allowed it.
    live_enabled: bool = True

    def __repr__(self) -> str:  # never print keys
        return (
            f"VerifiableConnection({self.ref.connection_id}, {self.keys!r}, locked={self.locked})"
        )


class ConnectionDirectory:
    """Connections that may deliver webhooks, by path id, cached briefly (misses too, against
    id spraying). Postgres notifications (change_listener.py) make any change to a connection's
    status, credentials or URL forget it at once, in every replica."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        vault: CredentialVault,
        ttl_seconds: float,
        timeout_seconds: float = 5.0,
    ) -> None:
        self._pool = pool
        self._vault = vault
        self._ttl = ttl_seconds
        # Bounds waiting for a pooled connection too: a sender gets a 503 well before it gives up.
        self._timeout = timeout_seconds
        # By path id; and which path each cached connection is under, so that a change
        # notification (which names the connection) finds it.
        self._known: dict[uuid.UUID, tuple[float, VerifiableConnection]] = {}
        self._paths: dict[uuid.UUID, uuid.UUID] = {}
        # Misses are kept apart and bounded on their own: spraying random ids must not push
        # real connections out.
        self._unknown: dict[uuid.UUID, float] = {}
        # Bumped by every change notification, so a load that was already reading when a change
        # happened is not cached (it may have read the row as it was before). A load does not
        # know its connection before it returns, so any change spoils the loads in flight.
        self._generation = 0
        # False while change notifications may be missed (the listener is reconnecting).
        self.trust_cache = True
        # Loads under way, by path id, with the generation each began in: a request that misses
        # the cache while one is under way waits for it instead of reading the same rows (and
        # opening the same secrets) again, as every request would when a busy entry expires.
        self._loading: dict[uuid.UUID, tuple[int, asyncio.Task[VerifiableConnection | None]]] = {}

    def forget(self, connection_id: uuid.UUID) -> None:
        self._generation += 1
        path_id = self._paths.pop(connection_id, None)
        if path_id is not None:
            self._known.pop(path_id, None)
        # A connection whose URL was just given to it may have been a miss until now.
        self._unknown.clear()

    def forget_all(self) -> None:
        self._generation += 1
        self._known.clear()
        self._paths.clear()
        self._unknown.clear()

    async def find(self, path_id: uuid.UUID) -> VerifiableConnection | None:
        """The connection whose webhook URL ends in `path_id`, or None if there is none or it is
        not accepting webhooks.

        Raises UnreadableSecret if its secret does not decrypt, and TransientError if the
        database cannot answer; neither is cached.
        """
        now = time.monotonic()
        if self.trust_cache:
            known = self._known.get(path_id)
            if known is not None and known[0] > now:
                return known[1]
            unknown_until = self._unknown.get(path_id)
            if unknown_until is not None and unknown_until > now:
                return None
        under_way = self._loading.get(path_id)
        if under_way is None or under_way[0] != self._generation:
            # None under way, or begun before the last change (it may read the row as it was).
            generation = self._generation
            load = asyncio.get_running_loop().create_task(
                self._load_and_remember(path_id, generation, now + self._ttl)
            )
            under_way = (generation, load)
            self._loading[path_id] = under_way
            load.add_done_callback(lambda _: self._loaded(path_id, under_way))
        # Shielded: a request that stops waiting (its client left) stops no one else's lookup.
        return await asyncio.shield(under_way[1])

    async def _load_and_remember(
        self, path_id: uuid.UUID, generation: int, until: float
    ) -> VerifiableConnection | None:
        async with database_call("connection lookup", self._timeout):
            found = await self._load(path_id)
        if self.trust_cache and self._generation == generation:
            self._remember(path_id, found, until)
        return found

    def _loaded(self, path_id: uuid.UUID, entry: tuple[int, asyncio.Task[Any]]) -> None:
        if self._loading.get(path_id) is entry:
            del self._loading[path_id]
        if not entry[1].cancelled():
            entry[1].exception()  # retrieved: whoever waited for it has raised it

    def _remember(
        self, path_id: uuid.UUID, found: VerifiableConnection | None, until: float
    ) -> None:
        if found is None:
            if len(self._unknown) >= _MAX_CACHED:
                self._unknown.clear()
            self._unknown[path_id] = until
            return
        if len(self._known) >= _MAX_CACHED:
            self._known.clear()
            self._paths.clear()
        self._known[path_id] = (until, found)
        self._paths[found.ref.connection_id] = path_id

    async def _load(self, path_id: uuid.UUID) -> VerifiableConnection | None:
        async with self._pool.acquire() as conn:
            row = await conn.fetchrow(
                "SELECT id, user_id, account_id, broker, connection_type, account_number, server"
                ", lifecycle, live_enabled_at FROM mt5_connections"
                " WHERE webhook_path_id = $1 AND lifecycle = ANY($2::text[])",
                path_id,
                list(_VERIFIABLE),
            )
            if row is None:
                return None
            connection_id: uuid.UUID = row["id"]
            now = datetime.now(UTC)
            try:
                secrets = await self._vault.open_active(
                    conn, connection_id, credential_kinds.WEBHOOK_SECRET, now
                )
                public_keys = await self._vault.open_active(
                    conn, connection_id, credential_kinds.WEBHOOK_PUBLIC_KEY, now
                )
            except (DecryptionFailed, LookupError) as exc:  # LookupError: its data key is gone
                raise UnreadableSecret(connection_id) from exc
        ref = ConnectionRef.from_row(row)
        keys = VerificationKeys(secrets=tuple(secrets), public_keys=tuple(public_keys))
        return VerifiableConnection(
            ref,
            keys,
            locked=row["lifecycle"] == "locked",
            paused=row["lifecycle"] == "paused",
            live_enabled=row["connection_type"] == "demo" or row["live_enabled_at"] is not None,
        )
