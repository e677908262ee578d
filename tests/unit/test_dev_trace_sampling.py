"""The dev stack records a share of the traces, decided where each trace starts; a sampler the
environment names decides instead (the suite's records every trace)."""

from __future__ import annotations

import os

import pytest
from aiokafka import ConsumerRecord
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import TraceIdRatioBased

from bench.pipeline_drain import traceparent
from services.devstack.stack import DEV_TRACE_SAMPLE_RATIO, trace_sampling
from services.shared.messaging import start_process_span, start_send_span


def test_the_dev_stack_records_a_tenth_of_the_traces_by_the_sdks_own_settings() -> None:
    assert trace_sampling({}) == {
        "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
        "OTEL_TRACES_SAMPLER_ARG": "0.1",
    }
    assert DEV_TRACE_SAMPLE_RATIO == 0.1


def test_a_sampler_named_in_the_environment_decides_instead() -> None:
    assert trace_sampling({"OTEL_TRACES_SAMPLER": "always_on"}) == {}


def test_every_process_the_suite_starts_records_every_trace() -> None:
    assert os.environ["OTEL_TRACES_SAMPLER"] == "parentbased_always_on"
    assert TracerProvider().sampler.get_description().startswith("ParentBased{root:AlwaysOn")


def test_the_benchs_queued_records_are_flagged_as_ingests_ratio_sampler_decides() -> None:
    every = [traceparent(TraceIdRatioBased(1.0)) for _ in range(50)]
    none = [traceparent(TraceIdRatioBased(0.0)) for _ in range(50)]
    assert all(header.endswith(b"-01") for header in every)
    assert all(header.endswith(b"-00") for header in none)


@pytest.mark.parametrize(("flag", "recorded"), [(b"01", True), (b"00", False)])
def test_a_consumer_follows_the_decision_its_records_context_carries_and_passes_it_on(
    spans: InMemorySpanExporter, flag: bytes, recorded: bool
) -> None:
    spans.clear()
    context = b"00-" + b"ab" * 16 + b"-" + b"cd" * 8 + b"-" + flag
    record = ConsumerRecord(
        "raw", 0, 7, 0, 0, b"key", b"{}", None, 3, 2, [("traceparent", context)]
    )
    process = start_process_span(record, "group")
    headers: list[tuple[str, bytes]] = []
    send = start_send_span("canonical", "key", headers, process)
    send.end()
    process.end()
    [sent] = [value for key, value in headers if key == "traceparent"]
    assert sent.startswith(b"00-" + b"ab" * 16) and sent.endswith(b"-" + flag)
    assert len(spans.get_finished_spans()) == (2 if recorded else 0)
