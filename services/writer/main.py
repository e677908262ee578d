"""The writer entrypoint: wires Postgres and Kafka once, then consumes until told to stop."""

from __future__ import annotations

import asyncio
import contextlib

from services.shared.consuming import RetryBudget, consume_batches
from services.shared.database import create_pool
from services.shared.dead_letters import DeadLetterBudget, DeadLetterPublisher
from services.shared.kafka import create_consumer, create_producer
from services.shared.lifecycle import mark_ready, run_service
from services.shared.logging import get_logger
from services.writer.pipeline import Writer
from services.writer.repository import JournalRepository
from services.writer.settings import WriterSettings

_log = get_logger("poscal.writer")


async def serve(settings: WriterSettings, stop: asyncio.Event) -> None:
    topics = settings.topics
    async with contextlib.AsyncExitStack() as stack:
        pool = await create_pool(settings.database_url.get_secret_value(), max_size=4)
        stack.push_async_callback(pool.close)
        producer = create_producer(settings.kafka_bootstrap_servers, "poscal-writer")
        await producer.start()
        stack.push_async_callback(producer.stop)
        consumer = create_consumer(
            settings.kafka_bootstrap_servers,
            topics.canonical,
            settings.consumer_group,
            "poscal-writer",
            settings.kafka_session_timeout_ms,
            settings.kafka_fetch_max_wait_ms,
        )
        await consumer.start()
        stack.push_async_callback(consumer.stop)
        mark_ready(settings.ready_file)
        writer = Writer(
            pool,
            JournalRepository(),
            DeadLetterPublisher(
                producer,
                topics.dead_letter,
                "writer",
                DeadLetterBudget(
                    settings.max_consecutive_dead_letters, settings.dead_letter_budget_sources
                ),
            ),
            settings.consumer_group,
        )
        _log.info("writer consuming", topic=topics.canonical, group=settings.consumer_group)
        await consume_batches(
            consumer,
            writer,
            stop,
            max_records=settings.max_batch,
            retry_budget=RetryBudget(settings.retry_budget_attempts, settings.retry_budget_seconds),
        )


def main() -> int:
    settings = WriterSettings()
    return run_service("writer", settings, lambda stop: serve(settings, stop))
