"""The dead-letter topic's contract, and the budget that stops a bad deploy dead-lettering all."""

from __future__ import annotations

import base64
import hashlib
import math
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Literal

from aiokafka import AIOKafkaProducer, ConsumerRecord
from prometheus_client import Counter
from pydantic import AwareDatetime, BaseModel, ConfigDict, field_validator

from services.shared.errors import PermanentError, TransientError
from services.shared.logging import get_logger
from services.shared.probes import kafka_answers

Stage = Literal["normalizer", "writer"]
_log = get_logger("poscal.dead_letters")

# The producer would send up to MAX_MESSAGE_BYTES (4 MiB, its `max_request_size` in kafka.py),
# but a letter is kept below Kafka's default broker limit (`message.max.bytes`, 1 MiB) so that it
# is accepted even on a dead-letter topic left at the default; the 64 KiB of headroom cover the
# key, the copied headers and the record's framing.
MAX_DEAD_LETTER_BYTES = 1024 * 1024 - 64 * 1024
# How much of a rejected item a letter describes: enough to read, never the whole of a flood.
MAX_ITEM_DEPTH = 16
MAX_ITEM_TEXT = 2000
MAX_ITEM_ENTRIES = 200
_SURROGATE = re.compile("[\ud800-\udfff]")

DEAD_LETTERS = Counter(
    "poscal_dead_letters",
    "Dead letters sent (acknowledged by the broker), by stage and reason code",
    ["stage", "reason"],
)
# Reason codes are identifiers in our code (mappers' and the stages' own), never data; anything
# else is counted as `other`, so no input can mint label values.
_REASON_CODE = re.compile("[a-z][a-z0-9_]{0,63}")


def reason_label(reason_code: str) -> str:
    """The reason code as a metric label: the code itself, or `other` for anything unexpected."""
    return reason_code if _REASON_CODE.fullmatch(reason_code) else "other"


def safe_text(text: object, limit: int = 4000) -> str:
    """Any text as a letter can carry it: lone surrogates replaced (U+FFFD), cut to `limit`."""
    value = text if isinstance(text, str) else repr(text)
    if len(value) > limit:
        value = value[:limit] + f"...[{len(value) - limit} more characters]"
    return _SURROGATE.sub("\ufffd", value)


def json_safe(value: Any, depth: int = 0) -> Any:
    """A rejected item as JSON data a reader can see: exact numbers as their text, text made
    valid, nesting, long text and long lists cut (and marked); never raises. The record's own
    bytes stay in the letter as they were (`value_b64`), so nothing is lost by describing less."""
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, Decimal | float):
        return str(value)
    if isinstance(value, str):
        return safe_text(value, MAX_ITEM_TEXT)
    if depth >= MAX_ITEM_DEPTH:
        return f"[nested deeper than {MAX_ITEM_DEPTH} levels: omitted]"
    if isinstance(value, dict):
        entries = list(value.items())
        safe = {
            safe_text(key, 200): json_safe(item, depth + 1)
            for key, item in entries[:MAX_ITEM_ENTRIES]
        }
        if len(entries) > MAX_ITEM_ENTRIES:
            safe["..."] = f"[{len(entries) - MAX_ITEM_ENTRIES} more entries]"
        return safe
    if isinstance(value, list | tuple):
        items = [json_safe(item, depth + 1) for item in value[:MAX_ITEM_ENTRIES]]
        if len(value) > MAX_ITEM_ENTRIES:
            items.append(f"[{len(value) - MAX_ITEM_ENTRIES} more items]")
        return items
    return safe_text(value, MAX_ITEM_TEXT)


class ItemRejection(BaseModel):
    """One item of a message that was set aside while the rest of the message went on.

    `index` is the item's place in the payload's list of items; a part of the payload that is no
    list item (its account summary) has no index and says where it is in `location`.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    index: int | None
    code: str
    detail: str
    item: Any = None
    location: str | None = None

    @field_validator("code", "detail", "location", mode="before")
    @classmethod
    def _text(cls, value: object) -> object:
        return None if value is None else safe_text(value)

    @field_validator("item", mode="before")
    @classmethod
    def _item(cls, value: Any) -> Any:
        return json_safe(value)


class DeadLetter(BaseModel):
    """A message that could not be processed, with why, and exactly where it came from.

    One letter per message, carrying the message once: either the whole message was refused
    (no `rejections`), or only some of its items were, listed in `rejections`. A letter that
    would be too large for the topic keeps only the first rejections that fit, marked
    `rejections_truncated`; `rejected_count` and `reason` still count them all. A message too
    large to carry at all is named instead (`value_truncated`, its size and SHA-256): it stays
    readable on its source topic at `topic`/`partition`/`offset` while the topic retains it.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: Literal[1] = 1
    stage: Stage
    reason_code: str
    reason: str
    failed_at: AwareDatetime
    topic: str
    partition: int
    offset: int
    key: str | None
    event_id: str | None = None
    rejected_count: int = 0
    rejections: tuple[ItemRejection, ...] = ()
    rejections_truncated: bool = False
    value_b64: str
    value_bytes: int = 0
    value_sha256: str = ""
    value_truncated: bool = False

    @field_validator("reason_code", "reason", "topic", "key", "event_id", mode="before")
    @classmethod
    def _text(cls, value: object) -> object:
        return None if value is None else safe_text(value)


def dead_letter(
    record: ConsumerRecord,
    *,
    stage: Stage,
    reason_code: str,
    reason: str,
    failed_at: datetime,
    event_id: str | None = None,
    rejections: Sequence[ItemRejection] = (),
) -> DeadLetter:
    """The letter for `record`, refused as a whole or, with `rejections`, in some items. Never
    raises: should the details not describe (they always should), the letter says so and
    carries the message without them.

    So building a letter cannot fail: whatever a record holds (any bytes, any nesting, text that
    is not valid Unicode), its letter is valid JSON, and `fit_to_size` keeps it within the size
    limit, so a record can always be set aside and its partition moves on."""
    value = bytes(record.value or b"")
    common: dict[str, Any] = {
        "stage": stage,
        "failed_at": failed_at,
        "topic": record.topic,
        "partition": record.partition,
        "offset": record.offset,
        "key": record.key.decode("utf-8", "replace") if record.key is not None else None,
        "value_b64": base64.b64encode(value).decode("ascii"),
        "value_bytes": len(value),
        "value_sha256": hashlib.sha256(value).hexdigest(),
        "rejected_count": len(rejections),
    }
    try:
        return DeadLetter(
            **common,
            reason_code=reason_code,
            reason=reason,
            event_id=event_id,
            rejections=tuple(rejections),
        )
    except Exception as exc:  # a fallback that cannot fail: only our own plain values
        return DeadLetter(
            **common,
            reason_code=safe_text(reason_code, 64),
            reason=f"{safe_text(reason)} (the letter's details could not be built: "
            f"{type(exc).__name__})",
            rejections_truncated=bool(rejections),
        )


def fit_to_size(letter: DeadLetter, max_bytes: int = MAX_DEAD_LETTER_BYTES) -> DeadLetter:
    """The letter as it can be sent: if larger than `max_bytes`, its rejections are cut to the
    first ones that fit, and if even the bare letter is too large, its message is left out
    (named by size and hash). A letter too large to send would block its partition for good."""
    if _size(letter) <= max_bytes:
        return letter
    bare = letter.model_copy(update={"rejections": (), "rejections_truncated": True})
    if _size(bare) > max_bytes:
        bare = bare.model_copy(update={"value_b64": "", "value_truncated": True})
    room = max_bytes - _size(bare)
    kept: list[ItemRejection] = []
    for rejection in letter.rejections:
        cost = _size(rejection) + (1 if kept else 0)  # and the comma before it
        if cost > room:
            break
        kept.append(rejection)
        room -= cost
    return bare.model_copy(update={"rejections": tuple(kept)})


def _size(model: BaseModel) -> int:
    return len(model.model_dump_json().encode())


class DeadLetterBudgetExceeded(PermanentError):
    """Too many consecutive invalid messages: more likely our bug than bad input, so stop."""


class DeadLetterBudget:
    """Counts consecutive dead letters and the sources (tenants: user ids where known) they
    came from; any good message ends the run.

    A bad deploy fails everyone's records, while tenants sending nothing but garbage are their
    own problem and must stop no one. So the budget is spent only by a run longer than
    `max_consecutive` that spans at least `min_sources` sources and at least `active_share` of
    the sources whose messages were processed in the last `window_seconds`: garbage from a few
    accounts, however long and from however many of their connections, never spends it.
    """

    _MAX_REMEMBERED = 100_000

    def __init__(
        self,
        max_consecutive: int,
        min_sources: int = 1,
        *,
        active_share: float = 0.5,
        window_seconds: float = 86_400,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._max = max_consecutive
        self._min_sources = max(1, min_sources)
        self._share = active_share
        self._window = window_seconds
        self._clock = clock
        self._consecutive = 0
        self._sources: set[object] = set()
        # When each source last had a message processed, and how many did so in the window
        # (recounted at most once a minute: a long run must not cost a scan per message).
        self._active: dict[object, float] = {}
        self._active_count = 0
        self._counted_at = -math.inf

    def record_valid(self, source: object = None) -> None:
        self._consecutive = 0
        self._sources.clear()
        if source is not None:
            if len(self._active) >= self._MAX_REMEMBERED:
                self._count_active(force=True)
            self._active[source] = self._clock()

    def record_invalid(self, source: object = None) -> None:
        self._consecutive += 1
        if len(self._sources) < self._MAX_REMEMBERED:
            self._sources.add(source)
        if self._consecutive <= self._max or len(self._sources) < self._min_sources:
            return
        needed = max(self._min_sources, math.ceil(self._share * self._count_active()))
        if len(self._sources) >= needed:
            raise DeadLetterBudgetExceeded(
                f"{self._consecutive} consecutive invalid messages (limit {self._max}) from "
                f"{len(self._sources)} sources; stopping without committing so a fix can "
                "reprocess them"
            )

    def _count_active(self, *, force: bool = False) -> int:
        now = self._clock()
        if force or now - self._counted_at >= 60:
            since = now - self._window
            self._active = {s: at for s, at in self._active.items() if at >= since}
            self._active_count, self._counted_at = len(self._active), now
        return self._active_count


class DeadLetterPublisher:
    """Sends dead letters (acknowledged before returning) and keeps the budget of a consumer.

    A record already set aside by this process (its batch then failed and came back) is not
    sent or counted again."""

    _REMEMBERED = 10_000

    def __init__(
        self,
        producer: AIOKafkaProducer,
        topic: str,
        stage: Stage,
        budget: DeadLetterBudget,
        max_bytes: int = MAX_DEAD_LETTER_BYTES,
    ) -> None:
        self._producer = producer
        self._topic = topic
        self._stage = stage
        self._budget = budget
        self._max_bytes = max_bytes
        self._sent: OrderedDict[tuple[str, int, int], None] = OrderedDict()

    async def reject(
        self,
        record: ConsumerRecord,
        reason_code: str,
        reason: str,
        event_id: str | None = None,
        *,
        rejections: Sequence[ItemRejection] = (),
        source: object = None,
    ) -> None:
        """Set a message aside, whole or (with `rejections`) in some of its items: log it,
        send one dead letter for it, and count that one letter against the budget, as coming
        from `source` (the tenant: its user id; default: the record's key)."""
        where = (record.topic, record.partition, record.offset)
        if where in self._sent:
            return
        log = _log.bind(
            stage=self._stage, topic=record.topic, partition=record.partition, offset=record.offset
        )
        log.warning(
            "message dead-lettered",
            reason_code=safe_text(reason_code, 64),
            reason=safe_text(reason, 500),
            rejected_count=len(rejections),
        )
        letter = dead_letter(
            record,
            stage=self._stage,
            reason_code=reason_code,
            reason=reason,
            failed_at=datetime.now(UTC),
            event_id=event_id,
            rejections=rejections,
        )
        sendable = fit_to_size(letter, self._max_bytes)
        if sendable.rejections_truncated:
            log.warning(
                "dead letter's rejections truncated to fit the topic",
                kept=len(sendable.rejections),
                rejected_count=sendable.rejected_count,
                max_bytes=self._max_bytes,
            )
        await self._send(record, sendable)
        DEAD_LETTERS.labels(self._stage, reason_label(reason_code)).inc()
        self._sent[where] = None
        if len(self._sent) > self._REMEMBERED:
            self._sent.popitem(last=False)
        self._budget.record_invalid(source if source is not None else record.key)

    async def reachable(self) -> bool:
        """Whether the dead-letter topic can take a letter now."""
        return await kafka_answers(self._producer, [self._topic])

    def accepted(self, source: object = None) -> None:
        """A message of `source` (its tenant) was processed: the run of invalid ones is over."""
        self._budget.record_valid(source)

    async def _send(self, record: ConsumerRecord, letter: DeadLetter) -> None:
        headers = [*(record.headers or ()), ("poscal-reason-code", letter.reason_code.encode())]
        try:
            await self._producer.send_and_wait(
                self._topic, letter.model_dump_json().encode(), key=record.key, headers=headers
            )
        except Exception as exc:
            raise TransientError(f"dead letter not acknowledged: {type(exc).__name__}") from exc
