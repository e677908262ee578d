"""When a connection's credentials are due for rotation (pure): by the age of the newest active
credential of each kind, unless suspicious activity has forced rotation already."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

WARN_AFTER = timedelta(days=60)
DUE_AFTER = timedelta(days=90)

Rotation = Literal["ok", "warning", "due", "forced"]
_THRESHOLDS: tuple[tuple[Rotation, timedelta], ...] = (("due", DUE_AFTER), ("warning", WARN_AFTER))


@dataclass(frozen=True)
class ActiveCredential:
    """An unrevoked, unexpired credential, as far as rotation cares: never its value."""

    kind: str
    last_rotated_at: datetime
    rotation_forced_at: datetime | None = None
    rotation_forced_reason: str | None = None


@dataclass(frozen=True)
class RotationStatus:
    rotation: Rotation
    # Why rotation is forced (the mark's reason), or which kinds are old.
    reason: str | None
    age_days: dict[str, int]


def newest_by_kind(credentials: Iterable[ActiveCredential]) -> dict[str, ActiveCredential]:
    """Per kind, the newest credential: while an old webhook secret overlaps its replacement, the
    kind counts as rotated."""
    newest: dict[str, ActiveCredential] = {}
    for credential in credentials:
        seen = newest.get(credential.kind)
        if seen is None or credential.last_rotated_at > seen.last_rotated_at:
            newest[credential.kind] = credential
    return newest


def classify_rotation(credentials: Iterable[ActiveCredential], now: datetime) -> RotationStatus:
    credentials = list(credentials)
    newest = newest_by_kind(credentials)
    ages = {kind: now - c.last_rotated_at for kind, c in sorted(newest.items())}
    age_days = {kind: max(age.days, 0) for kind, age in ages.items()}
    forced = sorted(
        (c for c in credentials if c.rotation_forced_at is not None),
        key=lambda c: c.rotation_forced_at or now,
    )
    if forced:
        mark = forced[-1]
        return RotationStatus("forced", mark.rotation_forced_reason or "forced", age_days)
    for rotation, limit in _THRESHOLDS:
        old = [kind for kind, age in ages.items() if age > limit]
        if old:
            return RotationStatus(
                rotation, f"{', '.join(old)} older than {limit.days} days", age_days
            )
    return RotationStatus("ok", None, age_days)
