"""The normalizer entrypoint: waits for Kafka, wires it once, then consumes until told to stop."""

from __future__ import annotations

import asyncio
import contextlib

from services.normalizer.pipeline import Normalizer
from services.normalizer.settings import NormalizerSettings
from services.shared.consumer_metrics import ConsumerMetrics
from services.shared.consuming import RetryBudget, consume_batches
from services.shared.dead_letters import DeadLetterBudget, DeadLetterPublisher
from services.shared.dependencies import Dependencies
from services.shared.lifecycle import mark_ready, run_service
from services.shared.logging import get_logger
from services.shared.metrics_server import serve_metrics

_log = get_logger("poscal.normalizer")


async def serve(settings: NormalizerSettings, stop: asyncio.Event) -> None:
    topics = settings.topics
    async with contextlib.AsyncExitStack() as stack:
        serve_metrics(stack, settings.metrics_host, settings.metrics_port)
        connect = Dependencies(settings, stop, stack)
        producer = await connect.producer("poscal-normalizer")
        consumer = await connect.consumer(topics.raw, settings.consumer_group, "poscal-normalizer")
        mark_ready(settings.ready_file)
        normalizer = Normalizer(
            producer,
            topics.canonical,
            DeadLetterPublisher(
                producer,
                topics.dead_letter,
                "normalizer",
                DeadLetterBudget(
                    settings.max_consecutive_dead_letters, settings.dead_letter_budget_sources
                ),
            ),
            settings.consumer_group,
        )
        _log.info("normalizer consuming", topic=topics.raw, group=settings.consumer_group)
        await consume_batches(
            consumer,
            normalizer,
            stop,
            max_records=settings.max_batch,
            retry_budget=RetryBudget(settings.retry_budget_attempts, settings.retry_budget_seconds),
            metrics=ConsumerMetrics(consumer, settings.consumer_group),
        )


def main() -> int:
    settings = NormalizerSettings()
    return run_service("normalizer", settings, lambda stop: serve(settings, stop))
