"""Keyset pagination, pure: a page of a list ordered by (created_at, id), and the opaque cursor
that resumes after its last item."""

from __future__ import annotations

import base64
import binascii
import uuid
from dataclasses import dataclass
from datetime import datetime

import orjson

MAX_LIMIT = 100
DEFAULT_LIMIT = 50


class InvalidCursor(ValueError):
    """A cursor this API did not hand out."""


@dataclass(frozen=True)
class Position:
    """Where a page ends: the last item's (created_at, id)."""

    created_at: datetime
    id: uuid.UUID


def encode_cursor(position: Position) -> str:
    """Opaque to the client, though not secret: it only says where in the user's own list to
    resume, and row-level security bounds what any cursor can reach, so it is not signed."""
    raw = orjson.dumps([position.created_at.isoformat(), str(position.id)])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> Position:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created_at, id_ = orjson.loads(raw)
        position = Position(datetime.fromisoformat(created_at), uuid.UUID(id_))
    except (binascii.Error, ValueError, TypeError, orjson.JSONDecodeError):
        raise InvalidCursor("not a cursor of this list") from None
    if position.created_at.tzinfo is None:
        raise InvalidCursor("not a cursor of this list")
    return position
