"""Dead letters as an operator reads them (pure): which letters a filter selects, how one is
summed up and shown in full without a secret, and what replaying a selection would send where.

A letter is named by where it sits on the dead-letter topic, `PARTITION:OFFSET` (`2:17`).
"""

from __future__ import annotations

import base64
import binascii
import re
import uuid
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from aiokafka import ConsumerRecord
from pydantic import ValidationError

from services.shared.dead_letters import DeadLetter, safe_text

REASON_CODE_HEADER = "poscal-reason-code"
REPLAY_OF_HEADER = "poscal-replay-of"
REDACTED = "[redacted]"
# Keys whose values a letter never shows, at any depth of what it carries. Nothing this system
# writes into a raw event or a canonical batch is a secret (credentials stay in the vault,
# signatures in ingest), but a sender's body is the sender's: whatever it calls a password or a
# token is left out of what an operator's terminal (and its scrollback) shows.
_SECRET_KEY = re.compile(
    r"pass(word|wd|phrase)?|secret|token|authori[sz]ation|api[_-]?key|credential|private[_-]?key"
    r"|signature|cookie|session",
    re.IGNORECASE,
)
_AGO = re.compile(r"(\d{1,9})([smhd])")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


class InvalidSelection(ValueError):
    """What the operator asked to select cannot be read; the message says why."""


@dataclass(frozen=True, order=True)
class LetterId:
    """Where a letter sits on the dead-letter topic."""

    partition: int
    offset: int

    def __str__(self) -> str:
        return f"{self.partition}:{self.offset}"

    @classmethod
    def parse(cls, text: str) -> LetterId:
        partition, colon, offset = text.strip().partition(":")
        if not colon or not partition.isdigit() or not offset.isdigit():
            raise InvalidSelection(
                f"{text!r} is not a dead letter's id: PARTITION:OFFSET, as `list` prints it"
            )
        return cls(int(partition), int(offset))


@dataclass(frozen=True)
class StoredLetter:
    """A letter as read from the dead-letter topic: where it is, the letter, and the Kafka key
    and headers it was sent with (the original record's, plus its reason code)."""

    id: LetterId
    letter: DeadLetter
    key: bytes | None
    headers: tuple[tuple[str, bytes], ...]

    @property
    def connection_id(self) -> uuid.UUID | None:
        return letter_connection(self.letter)


@dataclass(frozen=True)
class UnreadableRecord:
    """A record on the dead-letter topic that is no letter (written by something else)."""

    id: LetterId
    problem: str


@dataclass(frozen=True)
class LetterFilter:
    """Every condition given must hold; none given selects every letter."""

    stages: frozenset[str] = frozenset()
    reason_codes: frozenset[str] = frozenset()
    connection_ids: frozenset[uuid.UUID] = frozenset()
    since: datetime | None = None
    until: datetime | None = None
    ids: frozenset[LetterId] = frozenset()

    @property
    def selects_everything(self) -> bool:
        return self == LetterFilter()

    def accepts(self, stored: StoredLetter) -> bool:
        letter = stored.letter
        return (
            (not self.ids or stored.id in self.ids)
            and (not self.stages or letter.stage in self.stages)
            and (not self.reason_codes or letter.reason_code in self.reason_codes)
            and (not self.connection_ids or stored.connection_id in self.connection_ids)
            and (self.since is None or letter.failed_at >= self.since)
            and (self.until is None or letter.failed_at < self.until)
        )


def stored_letters(
    records: Iterable[ConsumerRecord],
) -> tuple[list[StoredLetter], list[UnreadableRecord]]:
    """The dead-letter topic's records as letters, and those that are none (said, not lost)."""
    letters: list[StoredLetter] = []
    unreadable: list[UnreadableRecord] = []
    for record in records:
        where = LetterId(record.partition, record.offset)
        try:
            letter = DeadLetter.model_validate_json(record.value or b"")
        except ValidationError as exc:
            first = exc.errors()[0]["msg"]
            problem = f"not a dead letter ({exc.error_count()} problems; first: {first})"
            unreadable.append(UnreadableRecord(where, safe_text(problem, 300)))
            continue
        headers = tuple((name, bytes(value)) for name, value in record.headers or ())
        letters.append(StoredLetter(where, letter, record.key, headers))
    return letters, unreadable


def select_letters(letters: Iterable[StoredLetter], selection: LetterFilter) -> list[StoredLetter]:
    """The letters `selection` accepts, oldest failure first (then by place on the topic)."""
    chosen = [stored for stored in letters if selection.accepts(stored)]
    return sorted(chosen, key=lambda s: (s.letter.failed_at, s.id))


def parse_moment(text: str, now: datetime) -> datetime:
    """`--since`/`--until`: an ISO 8601 time (UTC unless it says otherwise) or a time ago
    (`90s`, `30m`, `24h`, `7d`)."""
    text = text.strip()
    ago = _AGO.fullmatch(text)
    if ago is not None:
        return now - timedelta(**{_UNITS[ago[2]]: int(ago[1])})
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidSelection(
            f"{text!r} is neither a time (2026-12-02T14:00:00Z) nor a time ago (30m, 24h, 7d)"
        ) from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def letter_connection(letter: DeadLetter) -> uuid.UUID | None:
    """The connection a letter's message belongs to: the `connection` both the raw event and
    the canonical batch carry, else the record's key (both topics are keyed by connection)."""
    value = _original_json(letter)
    connection = value.get("connection") if isinstance(value, dict) else None
    for candidate in (
        connection.get("connection_id") if isinstance(connection, dict) else None,
        letter.key,
    ):
        if isinstance(candidate, str):
            try:
                return uuid.UUID(candidate)
            except ValueError:
                continue
    return None


def letter_summary(stored: StoredLetter) -> dict[str, Any]:
    """One line's worth of a letter: what `list` prints."""
    letter = stored.letter
    connection = stored.connection_id
    return {
        "id": str(stored.id),
        "failed_at": letter.failed_at.astimezone(UTC).isoformat(),
        "stage": letter.stage,
        "reason_code": letter.reason_code,
        "reason": letter.reason,
        "connection_id": str(connection) if connection else None,
        "event_id": letter.event_id,
        "source": {"topic": letter.topic, "partition": letter.partition, "offset": letter.offset},
        "rejected_count": letter.rejected_count,
        "replayable": not letter.value_truncated,
    }


def letter_view(stored: StoredLetter) -> dict[str, Any]:
    """A letter in full as `show` prints it: every field, the original message decoded (a raw
    event's body too), and the trace headers; whatever a sender named like a secret is
    redacted, and the paths of what was are listed."""
    letter = stored.letter
    redacted: list[str] = []
    view = letter_summary(stored) | letter.model_dump(
        mode="json", exclude={"value_b64", "rejections"}
    )
    view["id"] = str(stored.id)
    view["key"] = letter.key
    view["headers"] = {
        name: value.decode("utf-8", "replace")
        for name, value in stored.headers
        if name != REASON_CODE_HEADER
    }
    view["rejections"] = [
        _redacted(rejection.model_dump(mode="json"), f"rejections[{i}]", redacted)
        for i, rejection in enumerate(letter.rejections)
    ]
    view["value"] = _redacted(_decoded_value(letter), "value", redacted)
    view["redacted"] = redacted
    return view


@dataclass(frozen=True)
class ReplayRecord:
    """One record a replay sends: the original message's exact bytes, key and headers, to the
    topic it was read from."""

    letter_id: LetterId
    topic: str
    key: bytes | None
    value: bytes
    headers: tuple[tuple[str, bytes], ...]


@dataclass(frozen=True)
class SkippedLetter:
    letter_id: LetterId
    why: str


@dataclass(frozen=True)
class ReplayPlan:
    records: tuple[ReplayRecord, ...] = ()
    skipped: tuple[SkippedLetter, ...] = ()
    per_topic: dict[str, int] = field(default_factory=dict)


def plan_replay(letters: Sequence[StoredLetter], dead_letter_topic: str) -> ReplayPlan:
    """What replaying `letters` sends: each message back to its source topic as it was first
    sent (same bytes, same key, so the same partition and order among its connection's
    messages; the same trace context and event id headers), marked with the letter it came
    from. A letter whose message was too large to carry is skipped, saying where it still is."""
    records: list[ReplayRecord] = []
    skipped: list[SkippedLetter] = []
    for stored in letters:
        letter = stored.letter
        if letter.value_truncated:
            skipped.append(
                SkippedLetter(
                    stored.id,
                    f"its message ({letter.value_bytes} bytes) was too large to carry; it is on"
                    f" {letter.topic} partition {letter.partition} offset {letter.offset} while"
                    " that topic retains it",
                )
            )
            continue
        headers = tuple(h for h in stored.headers if h[0] not in (REASON_CODE_HEADER,))
        origin = f"{dead_letter_topic}/{stored.id}".encode()
        records.append(
            ReplayRecord(
                stored.id,
                letter.topic,
                stored.key,
                base64.b64decode(letter.value_b64),
                (*(h for h in headers if h[0] != REPLAY_OF_HEADER), (REPLAY_OF_HEADER, origin)),
            )
        )
    per_topic = dict(sorted(Counter(record.topic for record in records).items()))
    return ReplayPlan(tuple(records), tuple(skipped), per_topic)


def replay_report(plan: ReplayPlan, *, dry_run: bool) -> dict[str, Any]:
    """What `replay` says it did (or, dry, would do)."""
    return {
        "dry_run": dry_run,
        "replayed": 0 if dry_run else len(plan.records),
        "selected": len(plan.records) + len(plan.skipped),
        "per_topic": plan.per_topic,
        "letters": [
            {"id": str(record.letter_id), "topic": record.topic} for record in plan.records
        ],
        "skipped": [{"id": str(s.letter_id), "why": s.why} for s in plan.skipped],
    }


def _original_json(letter: DeadLetter) -> Any:
    try:
        return orjson.loads(base64.b64decode(letter.value_b64))
    except (orjson.JSONDecodeError, binascii.Error, ValueError):
        return None


def _decoded_value(letter: DeadLetter) -> Any:
    """The original message as readable data: JSON as JSON (a raw event's body decoded into
    `body`), other bytes as text."""
    if letter.value_truncated:
        return None
    raw = base64.b64decode(letter.value_b64)
    value = _original_json(letter)
    if value is None:
        return safe_text(raw.decode("utf-8", "replace"))
    if isinstance(value, dict) and isinstance(value.get("body_b64"), str):
        try:
            body = base64.b64decode(value["body_b64"], validate=True)
        except (binascii.Error, ValueError):
            return value
        value = {k: v for k, v in value.items() if k != "body_b64"}
        try:
            value["body"] = orjson.loads(body)
        except orjson.JSONDecodeError:
            value["body"] = safe_text(body.decode("utf-8", "replace"))
    return value


def _redacted(value: Any, path: str, redacted: list[str]) -> Any:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            where = f"{path}.{key}"
            if isinstance(key, str) and _SECRET_KEY.search(key) and item not in (None, ""):
                out[key] = REDACTED
                redacted.append(where)
            else:
                out[key] = _redacted(item, where, redacted)
        return out
    if isinstance(value, list):
        return [_redacted(item, f"{path}[{i}]", redacted) for i, item in enumerate(value)]
    return value
