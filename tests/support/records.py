"""Consumer records as the consumers receive them, for specifications with no broker."""

from __future__ import annotations

from aiokafka import ConsumerRecord


def consumer_record(
    value: bytes,
    *,
    topic: str = "poscal.raw",
    partition: int = 0,
    offset: int = 0,
    key: bytes | None = b"connection-1",
) -> ConsumerRecord:
    return ConsumerRecord(
        topic=topic,
        partition=partition,
        offset=offset,
        timestamp=0,
        timestamp_type=0,
        key=key,
        value=value,
        checksum=None,
        serialized_key_size=len(key) if key is not None else -1,
        serialized_value_size=len(value),
        headers=[],
    )
