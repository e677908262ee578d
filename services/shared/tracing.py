"""OpenTelemetry set-up, and W3C trace context carried in Kafka headers."""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from pathlib import Path

import orjson
from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor
from opentelemetry.propagators.textmap import Getter, Setter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

KafkaHeaders = list[tuple[str, bytes]]


class _HeaderSetter(Setter[KafkaHeaders]):
    def set(self, carrier: KafkaHeaders, key: str, value: str) -> None:
        carrier.append((key, value.encode("ascii")))


class _HeaderGetter(Getter[Sequence[tuple[str, bytes]]]):
    def get(self, carrier: Sequence[tuple[str, bytes]], key: str) -> list[str] | None:
        values = [v.decode("ascii", "replace") for k, v in carrier if k == key]
        return values or None

    def keys(self, carrier: Sequence[tuple[str, bytes]]) -> list[str]:
        return [k for k, _ in carrier]


def inject_context(headers: KafkaHeaders, context: Context | None = None) -> KafkaHeaders:
    """Append a trace context (default: the current one) to Kafka headers."""
    propagate.inject(headers, context=context, setter=_HeaderSetter())
    return headers


def extract_context(headers: Sequence[tuple[str, bytes]] | None) -> Context:
    """The trace context a Kafka message carries (an empty context when it carries none)."""
    return propagate.extract(list(headers or ()), getter=_HeaderGetter())


class JsonLinesSpanExporter(SpanExporter):
    """Appends one JSON object per finished span to a file; safe for several processes."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._path = path
        self._lock = threading.Lock()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        lines = b"".join(orjson.dumps(span_to_record(s)) + b"\n" for s in spans)
        with self._lock:
            fd = os.open(self._path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, lines)
            finally:
                os.close(fd)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        return None


def span_to_record(span: ReadableSpan) -> dict[str, object]:
    context = span.get_span_context()
    parent = span.parent
    return {
        "trace_id": f"{context.trace_id:032x}" if context else None,
        "span_id": f"{context.span_id:016x}" if context else None,
        "parent_span_id": f"{parent.span_id:016x}" if parent else None,
        "name": span.name,
        "kind": span.kind.name,
        "service": span.resource.attributes.get("service.name"),
        "start_ns": span.start_time,
        "end_ns": span.end_time,
        "status": span.status.status_code.name,
        "attributes": dict(span.attributes or {}),
        "links": [
            {"trace_id": f"{link.context.trace_id:032x}", "span_id": f"{link.context.span_id:016x}"}
            for link in span.links
        ],
    }


# A consumer batch ends all its spans at once (two per record in the normalizer, up to 2,000
# records): the SDK's default queue of 2,048 would drop most of a batch's spans.
DEFAULT_SPANS_QUEUED = 16_384


def spans_queued() -> int:
    """How many finished spans may wait for export: the SDK's own `OTEL_BSP_MAX_QUEUE_SIZE` when
    set (an explicit size would override it), else room for a few whole batches."""
    return int(os.environ.get("OTEL_BSP_MAX_QUEUE_SIZE") or DEFAULT_SPANS_QUEUED)


def setup_tracing(service_name: str, trace_file: Path | None) -> TracerProvider:
    """Install the global tracer provider for this process and return it (to shut it down).

    OTLP export is on when the SDK's own `OTEL_EXPORTER_OTLP_ENDPOINT` (or
    `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set; spans also go to a JSON-lines file when
    `trace_file` is given (the dev stack does, for `poscal-sync traces`)."""
    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    queue = spans_queued()
    if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get(
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
    ):
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(), max_queue_size=queue))
    if trace_file is not None:
        provider.add_span_processor(
            BatchSpanProcessor(
                JsonLinesSpanExporter(trace_file), schedule_delay_millis=500, max_queue_size=queue
            )
        )
    trace.set_tracer_provider(provider)
    # A client span of every Postgres query (OpenTelemetry's own asyncpg instrumentation): the
    # statement, never its parameters.
    AsyncPGInstrumentor().instrument(tracer_provider=provider)  # type: ignore[no-untyped-call]
    return provider
