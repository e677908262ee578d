"""`poscal-sync traces`: the span files the dev stack writes, read back as one tree per trace."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import orjson
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace import SpanKind

from services.cli.traces import build_traces, load_spans, read_trace_dir, render_trace, run
from services.shared.tracing import JsonLinesSpanExporter, extract_context, inject_context

TRACE = "0af7651916cd43dd8448eb211c80319c"


def span(span_id: str, parent: str | None, start_ms: int, end_ms: int, **extra: Any) -> bytes:
    record = {
        "trace_id": TRACE,
        "span_id": span_id,
        "parent_span_id": parent,
        "name": f"span {span_id}",
        "kind": "INTERNAL",
        "service": "ingest",
        "start_ns": start_ms * 1_000_000,
        "end_ns": end_ms * 1_000_000,
        "status": "UNSET",
        "attributes": {},
    } | extra
    return orjson.dumps(record)


def test_spans_nest_under_their_parents_in_start_order() -> None:
    spans = load_spans([span("a", None, 0, 50), span("c", "a", 20, 30), span("b", "a", 10, 15)])

    [tree] = build_traces(spans)

    [root] = tree.roots
    assert [child.span.span_id for child in root.children] == ["b", "c"]


def test_a_span_whose_parent_is_not_yet_written_is_shown_as_a_root() -> None:
    [tree] = build_traces(load_spans([span("b", "missing", 10, 15), span("a", None, 0, 50)]))

    assert [root.span.span_id for root in tree.roots] == ["a", "b"]


def test_blank_malformed_and_half_written_lines_are_skipped() -> None:
    lines = [b"", b"not json", b"[1, 2]", b'{"trace_id": "x"}', span("a", None, 0, 1)[:-5]]

    assert load_spans([*lines, span("a", None, 0, 1)])[0].span_id == "a"
    assert len(load_spans(lines)) == 0


def test_the_rendered_tree_shows_services_durations_offsets_and_errors() -> None:
    spans = load_spans(
        [
            span("a", None, 0, 40, service="ingest", kind="SERVER"),
            span("b", "a", 5, 12, service="normalizer", status="ERROR"),
        ]
    )

    rendered = render_trace(build_traces(spans)[0]).splitlines()

    assert rendered[0].startswith(f"trace {TRACE}  2 services (ingest, normalizer)  40.0 ms  ")
    assert rendered[1:] == [
        "└─ ingest  span a  [SERVER]  40.0 ms",
        "   └─ normalizer  span b  [INTERNAL]  7.0 ms  (+5.0 ms)  ERROR",
    ]


def test_last_n_prints_only_the_most_recent_traces(tmp_path: Path) -> None:
    (tmp_path / "ingest.jsonl").write_bytes(
        b"\n".join(
            span(f"s{n}", None, n * 100, n * 100 + 1, trace_id=f"{n:032x}") for n in range(1, 4)
        )
    )
    out = io.StringIO()

    run(tmp_path, last=2, out=out)

    printed = [line.split()[1] for line in out.getvalue().splitlines() if line.startswith("trace")]
    assert printed == [f"{2:032x}", f"{3:032x}"]


def test_an_empty_state_dir_says_no_traces_yet(tmp_path: Path) -> None:
    out = io.StringIO()

    assert run(tmp_path / "traces", last=5, out=out) == 0
    assert out.getvalue().startswith("no traces recorded yet")


def provider(service: str, path: Path) -> TracerProvider:
    traced = TracerProvider(resource=Resource.create({"service.name": service}))
    traced.add_span_processor(SimpleSpanProcessor(JsonLinesSpanExporter(path)))
    return traced


def test_spans_two_services_export_to_their_files_join_into_one_trace(tmp_path: Path) -> None:
    ingest = provider("ingest", tmp_path / "ingest.jsonl").get_tracer("test")
    writer = provider("writer", tmp_path / "writer.jsonl").get_tracer("test")
    headers: list[tuple[str, bytes]] = []
    with ingest.start_as_current_span("POST /v1/webhooks", kind=SpanKind.SERVER):
        inject_context(headers)
    with writer.start_as_current_span(
        "process poscal.canonical", context=extract_context(headers), kind=SpanKind.CONSUMER
    ):
        pass

    [tree] = build_traces(read_trace_dir(tmp_path))

    assert tree.services == ["ingest", "writer"]
    assert [(r.span.name, [c.span.name for c in r.children]) for r in tree.roots] == [
        ("POST /v1/webhooks", ["process poscal.canonical"])
    ]
