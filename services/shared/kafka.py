"""Kafka clients configured the one way this pipeline uses them (at least once), and topics."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TypeVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import (
    KafkaConnectionError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    NodeNotReadyError,
    RecordListTooLargeError,
    RecordTooLargeError,
    RequestTimedOutError,
    TopicAlreadyExistsError,
)

Client = TypeVar("Client", AIOKafkaProducer, AIOKafkaConsumer)

# The largest message a producer sends (aiokafka's `max_request_size`, also its per-record cap).
# Kafka's own default is 1 MiB, and a raw event carries its body in base64 (4/3 of it): poll
# pages are kept far below that (the adapters' MAX_PAGE_BYTES); this is headroom for what cannot
# be split. Topics must allow as much (`max.message.bytes`, set in infra/kafka-topics.sh):
# otherwise the broker still refuses anything over its own 1 MiB default.
MAX_MESSAGE_BYTES = 4 * 1024 * 1024

# What one produce request carries per partition at most (aiokafka's `max_batch_size`).
PRODUCE_BATCH_BYTES = 256 * 1024

# No broker answers right now (down, starting, unreachable): worth waiting for at start-up.
KAFKA_UNREACHABLE: tuple[type[BaseException], ...] = (
    KafkaConnectionError,
    KafkaTimeoutError,
    NodeNotReadyError,
    RequestTimedOutError,
    OSError,
    TimeoutError,
)


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int = 6
    replication_factor: int = 1


def create_producer(bootstrap_servers: str, client_id: str) -> AIOKafkaProducer:
    """A producer whose acknowledgement means every in-sync replica has the record (`acks=all`).

    Not the idempotent producer (the embedded broker lacks it): a retried send may duplicate a
    record, and exactly-once effects come from the idempotent sinks downstream instead."""
    return AIOKafkaProducer(
        bootstrap_servers=bootstrap_servers,
        client_id=client_id,
        acks="all",
        enable_idempotence=False,
        linger_ms=2,
        # Per partition and request: aiokafka's 16 KiB default split a normalizer batch's
        # canonical records into a dozen produce round trips, each awaited in turn.
        max_batch_size=PRODUCE_BATCH_BYTES,
        request_timeout_ms=15000,
        max_request_size=MAX_MESSAGE_BYTES,
    )


def create_consumer(
    bootstrap_servers: str,
    topic: str,
    group_id: str,
    client_id: str,
    session_timeout_ms: int = 10000,
    fetch_max_wait_ms: int = 500,
) -> AIOKafkaConsumer:
    """A consumer that never auto-commits: the consume loop commits `offset + 1` only once the
    work is durable (consuming.py)."""
    return AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap_servers,
        group_id=group_id,
        client_id=client_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
        session_timeout_ms=session_timeout_ms,
        heartbeat_interval_ms=max(100, session_timeout_ms // 4),
        fetch_max_wait_ms=fetch_max_wait_ms,
    )


def refused_for_its_content(exc: BaseException) -> bool:
    """Whether a failed send was refused for the record itself (too large for the producer or the
    topic): sending it again cannot succeed, unlike a broker that is away."""
    return isinstance(exc, MessageSizeTooLargeError | RecordTooLargeError | RecordListTooLargeError)


async def started(client: Client) -> Client:
    """The client, started; one that fails to start (or is cancelled meanwhile) is closed."""
    try:
        await client.start()
    except BaseException:
        await client.stop()
        raise
    return client


def next_offsets(records: Iterable[ConsumerRecord]) -> dict[TopicPartition, int]:
    """The offsets to commit after `records` are done: the highest offset + 1 per partition."""
    offsets: dict[TopicPartition, int] = {}
    for record in records:
        partition = TopicPartition(record.topic, record.partition)
        offsets[partition] = max(offsets.get(partition, 0), record.offset + 1)
    return offsets


async def ensure_topics(bootstrap_servers: str, topics: Iterable[TopicSpec]) -> None:
    """Create the topics that do not exist yet; existing ones are left as they are."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers, client_id="poscal-admin")
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [
            NewTopic(t.name, t.partitions, t.replication_factor)
            for t in topics
            if t.name not in existing
        ]
        if missing:
            # Another process may create one first: that is the state we wanted anyway.
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics(missing)
    finally:
        await admin.close()
