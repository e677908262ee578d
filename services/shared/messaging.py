"""Spans for producing and consuming Kafka messages, per OpenTelemetry messaging conventions."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from aiokafka import ConsumerRecord
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from services.shared.tracing import KafkaHeaders, extract_context, inject_context

_tracer = trace.get_tracer("poscal.messaging")


def _common(topic: str, operation: str) -> dict[str, Any]:
    return {
        "messaging.system": "kafka",
        "messaging.destination.name": topic,
        "messaging.operation.type": operation,
        "messaging.operation.name": operation,
    }


@contextmanager
def send_span(topic: str, key: str, headers: KafkaHeaders) -> Iterator[Span]:
    """A PRODUCER span for one send; injects its context into `headers` before sending."""
    attributes = _common(topic, "send") | {"messaging.kafka.message.key": key}
    with _tracer.start_as_current_span(
        f"send {topic}", kind=SpanKind.PRODUCER, attributes=attributes
    ) as span:
        inject_context(headers)
        yield span


def start_send_span(
    topic: str,
    key: str,
    headers: KafkaHeaders,
    parent: Span | None = None,
    attributes: dict[str, Any] | None = None,
) -> Span:
    """A PRODUCER span the caller ends once the send is acknowledged; its context goes into
    `headers`. For pipelined sends, where a `with` block would end it too early. Its parent is
    `parent` when given, else the current span."""
    attributes = _common(topic, "send") | {"messaging.kafka.message.key": key} | (attributes or {})
    context = trace.set_span_in_context(parent) if parent is not None else None
    span = _tracer.start_span(
        f"send {topic}", context=context, kind=SpanKind.PRODUCER, attributes=attributes
    )
    inject_context(headers, trace.set_span_in_context(span))
    return span


def record_delivery(span: Span, partition: int, offset: int) -> None:
    span.set_attribute("messaging.destination.partition.id", str(partition))
    span.set_attribute("messaging.kafka.offset", offset)


def start_process_span(record: ConsumerRecord, consumer_group: str) -> Span:
    """A CONSUMER span for processing one record, continuing the trace its headers carry.

    The caller ends it: a batch's spans stay open until the batch's work is durable.
    """
    attributes = _common(record.topic, "process") | {
        "messaging.consumer.group.name": consumer_group,
        "messaging.destination.partition.id": str(record.partition),
        "messaging.kafka.offset": record.offset,
    }
    if record.key is not None:
        attributes["messaging.kafka.message.key"] = record.key.decode("utf-8", "replace")
    return _tracer.start_span(
        f"process {record.topic}",
        context=extract_context(record.headers),
        kind=SpanKind.CONSUMER,
        attributes=attributes,
    )


@contextmanager
def ending_spans(spans: list[Span]) -> Iterator[list[Span]]:
    """Every span of `spans` (those appended within the block too) ended when the block ends,
    with an error status when it raised: a batch's spans stay open until its work is done."""
    try:
        yield spans
    except BaseException as exc:
        for span in spans:
            span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
        raise
    finally:
        for span in spans:
            span.end()
