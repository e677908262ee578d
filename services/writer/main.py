"""The writer entrypoint: waits for Postgres and Kafka, wires them once, then consumes until
told to stop."""

from __future__ import annotations

import asyncio
import contextlib

from services.shared.consumer_metrics import ConsumerMetrics
from services.shared.consuming import RetryBudget, consume_batches
from services.shared.dead_letters import DeadLetterBudget, DeadLetterPublisher
from services.shared.dependencies import Dependencies
from services.shared.lifecycle import mark_ready, run_service
from services.shared.logging import get_logger
from services.shared.metrics_server import serve_metrics
from services.writer.pipeline import Writer
from services.writer.repository import JournalRepository
from services.writer.settings import WriterSettings

_log = get_logger("poscal.writer")


async def serve(settings: WriterSettings, stop: asyncio.Event) -> None:
    topics = settings.topics
    async with contextlib.AsyncExitStack() as stack:
        serve_metrics(stack, settings.metrics_host, settings.metrics_port)
        connect = Dependencies(settings, stop, stack)
        pool = await connect.postgres(max_size=4)
        producer = await connect.producer("poscal-writer")
        consumer = await connect.consumer(
            topics.canonical, settings.consumer_group, "poscal-writer"
        )
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
            metrics=ConsumerMetrics(consumer, settings.consumer_group),
        )


def main() -> int:
    settings = WriterSettings()
    return run_service("writer", settings, lambda stop: serve(settings, stop))
