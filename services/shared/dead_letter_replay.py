"""The I/O around dead_letter_selection: reading the dead-letter topic, and sending a replay
plan's records back to their source topics, each acknowledged (acks=all) before it counts."""

from __future__ import annotations

from aiokafka import AIOKafkaProducer

from services.shared.dead_letter_selection import (
    ReplayPlan,
    StoredLetter,
    UnreadableRecord,
    stored_letters,
)
from services.shared.errors import TransientError
from services.shared.topic_reading import read_to_end


async def read_dead_letters(
    bootstrap_servers: str, topic: str, *, timeout_seconds: float = 60.0
) -> tuple[list[StoredLetter], list[UnreadableRecord]]:
    """Every letter on the dead-letter topic (read to its end), and any record that is none."""
    return stored_letters(
        await read_to_end(bootstrap_servers, topic, timeout_seconds=timeout_seconds)
    )


async def send_replay(producer: AIOKafkaProducer, plan: ReplayPlan) -> int:
    """Sends every record of `plan`, in order, each acknowledged before the next; returns how
    many were. Sending one twice is harmless: every sink downstream is idempotent."""
    sent = 0
    for record in plan.records:
        try:
            await producer.send_and_wait(
                record.topic, record.value, key=record.key, headers=list(record.headers)
            )
        except Exception as exc:
            raise TransientError(
                f"replay of dead letter {record.letter_id} to {record.topic} not acknowledged"
                f" ({type(exc).__name__}) after {sent} sent; replaying again is harmless"
            ) from exc
        sent += 1
    return sent
