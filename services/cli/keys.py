"""`keys rotate`: re-wrap every user data key under the current master key, while services run."""

from __future__ import annotations

import uuid
from collections import Counter
from dataclasses import dataclass

from services.shared.crypto import DecryptionFailed, data_key_aad
from services.shared.database import Connection
from services.shared.keyring import KeyRing

_BATCH = 500


class KeyRotationRefused(Exception):
    """The rotation cannot proceed; the message names key ids and rows, never a key."""


@dataclass(frozen=True)
class RotationReport:
    rewrapped: int
    already_current: int
    remaining: int


async def _unknown_keks(conn: Connection, keys: KeyRing) -> dict[str, int]:
    counts: Counter[str] = Counter(
        {
            row["kek_id"]: row["n"]
            for row in await conn.fetch(
                "SELECT kek_id, count(*) AS n FROM user_data_keys GROUP BY kek_id"
            )
        }
    )
    return {kek_id: n for kek_id, n in sorted(counts.items()) if not keys.knows(kek_id)}


async def rotate_data_keys(
    conn: Connection, keys: KeyRing, *, limit: int | None = None
) -> RotationReport:
    """Re-wrap data keys not under `keys.current`, at most `limit` of them in this run.

    Refuses, before changing anything, if some data key is under a KEK the ring does not hold:
    its owner's credentials could not be opened, and re-wrapping cannot change that.

    Runbook, to replace the master key (the key-encryption key) with no downtime:

    1. `poscal-sync keys new` prints a fresh key. Deploy every service (and the CLI) with it as
       `POSCAL_MASTER_KEY` and the old key in `POSCAL_PREVIOUS_MASTER_KEYS` (comma-separated).
    2. Run `poscal-sync keys rotate` until it prints `"remaining": 0`. Interrupting it loses
       nothing and running it again continues; two runs at once are safe.
    3. Remove the old key from `POSCAL_PREVIOUS_MASTER_KEYS` and deploy again.

    Each data key is re-wrapped in a statement of its own that updates the row only if it still
    holds what was read (compare-and-set on its kek id and wrapped bytes), so a concurrent run,
    or a service creating a data key meanwhile, is never overwritten. Credentials are not
    touched: they are sealed under the data keys, which stay the same.
    """
    unknown = await _unknown_keks(conn, keys)
    if unknown:
        listed = ", ".join(f"{kek_id} ({n} data keys)" for kek_id, n in unknown.items())
        raise KeyRotationRefused(
            f"data keys are wrapped under key-encryption keys that are neither"
            f" POSCAL_MASTER_KEY nor in POSCAL_PREVIOUS_MASTER_KEYS: {listed}"
        )
    rewrapped = 0
    after: tuple[uuid.UUID, int] = (uuid.UUID(int=0), -1)
    while limit is None or rewrapped < limit:
        batch = await conn.fetch(
            "SELECT user_id, version, kek_id, wrapped_key FROM user_data_keys"
            " WHERE kek_id <> $1 AND (user_id, version) > ($2, $3)"
            " ORDER BY user_id, version LIMIT $4",
            keys.key_id,
            *after,
            _BATCH,
        )
        if not batch:
            break
        for row in batch:
            if limit is not None and rewrapped >= limit:
                break
            user_id, version = row["user_id"], row["version"]
            after = (user_id, version)
            if not keys.knows(row["kek_id"]):  # a key deployed after this run started
                raise KeyRotationRefused(
                    f"the data key of user {user_id} version {version} is wrapped under"
                    f" {row['kek_id']}, which is neither the current key nor a previous one"
                )
            try:
                wrapped = keys.rewrap(
                    row["kek_id"], row["wrapped_key"], data_key_aad(user_id, version)
                )
            except DecryptionFailed:
                raise KeyRotationRefused(
                    f"the data key of user {user_id} version {version} does not unwrap under"
                    f" {row['kek_id']}: it was tampered with, or that key id is not this key"
                ) from None
            updated = await conn.execute(
                "UPDATE user_data_keys SET kek_id = $4, wrapped_key = $5"
                " WHERE user_id = $1 AND version = $2 AND kek_id = $3 AND wrapped_key = $6",
                user_id,
                version,
                row["kek_id"],
                keys.key_id,
                wrapped,
                row["wrapped_key"],
            )
            if updated == "UPDATE 1":
                rewrapped += 1
    counts = await conn.fetchrow(
        "SELECT count(*) FILTER (WHERE kek_id = $1) AS current,"
        " count(*) FILTER (WHERE kek_id <> $1) AS remaining FROM user_data_keys",
        keys.key_id,
    )
    assert counts is not None
    return RotationReport(
        rewrapped=rewrapped,
        already_current=counts["current"] - rewrapped,
        remaining=counts["remaining"],
    )
