"""`poscal-sync traces`: recent traces from the dev stack's span files, printed as trees. Pure core
(`load_spans`, `build_traces`, `render_trace`); the shell reads the `*.jsonl` span files."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import orjson


@dataclass(frozen=True)
class SpanRecord:
    trace_id: str
    span_id: str
    parent_span_id: str | None
    name: str
    kind: str
    service: str
    start_ns: int
    end_ns: int
    status: str
    attributes: dict[str, Any]

    @property
    def duration_ms(self) -> float:
        return (self.end_ns - self.start_ns) / 1e6


@dataclass
class SpanNode:
    span: SpanRecord
    children: list[SpanNode] = field(default_factory=list)


@dataclass(frozen=True)
class TraceTree:
    trace_id: str
    roots: list[SpanNode]
    spans: list[SpanRecord]

    @property
    def start_ns(self) -> int:
        return min(s.start_ns for s in self.spans)

    @property
    def end_ns(self) -> int:
        return max(s.end_ns for s in self.spans)

    @property
    def services(self) -> list[str]:
        return sorted({s.service for s in self.spans})


def _record(raw: Any) -> SpanRecord | None:
    if not isinstance(raw, dict):
        return None
    try:
        return SpanRecord(
            trace_id=str(raw["trace_id"]),
            span_id=str(raw["span_id"]),
            parent_span_id=raw.get("parent_span_id"),
            name=str(raw["name"]),
            kind=str(raw.get("kind", "INTERNAL")),
            service=str(raw.get("service") or "?"),
            start_ns=int(raw["start_ns"]),
            end_ns=int(raw["end_ns"]),
            status=str(raw.get("status", "UNSET")),
            attributes=dict(raw.get("attributes") or {}),
        )
    except (KeyError, TypeError, ValueError):
        return None


def load_spans(lines: Iterable[str | bytes]) -> list[SpanRecord]:
    """Span records from JSON lines; blank, malformed or half-written lines are skipped."""
    spans = []
    for line in lines:
        if not line.strip():
            continue
        try:
            record = _record(orjson.loads(line))
        except orjson.JSONDecodeError:
            continue
        if record is not None:
            spans.append(record)
    return spans


def build_traces(spans: Sequence[SpanRecord]) -> list[TraceTree]:
    """Spans grouped by trace and nested under their parents, earliest trace first.

    A span whose parent is not (yet) in the files becomes a root of its trace.
    """
    by_trace: dict[str, list[SpanRecord]] = {}
    for span in spans:
        by_trace.setdefault(span.trace_id, []).append(span)
    trees = []
    for trace_id, members in by_trace.items():
        nodes = {s.span_id: SpanNode(s) for s in members}
        roots: list[SpanNode] = []
        for node in nodes.values():
            parent = nodes.get(node.span.parent_span_id or "")
            (parent.children if parent else roots).append(node)
        for node in nodes.values():
            node.children.sort(key=lambda n: n.span.start_ns)
        roots.sort(key=lambda n: n.span.start_ns)
        trees.append(TraceTree(trace_id, roots, members))
    return sorted(trees, key=lambda t: t.start_ns)


def _line(node: SpanNode, parent: SpanRecord | None) -> str:
    span = node.span
    text = f"{span.service}  {span.name}  [{span.kind}]  {span.duration_ms:.1f} ms"
    if parent is not None and span.start_ns - parent.start_ns > 0:
        text += f"  (+{(span.start_ns - parent.start_ns) / 1e6:.1f} ms)"
    if span.status == "ERROR":
        text += "  ERROR"
    return text


def render_trace(tree: TraceTree) -> str:
    started = datetime.fromtimestamp(tree.start_ns / 1e9, UTC).isoformat(timespec="milliseconds")
    lines = [
        f"trace {tree.trace_id}  {len(tree.services)} services ({', '.join(tree.services)})"
        f"  {(tree.end_ns - tree.start_ns) / 1e6:.1f} ms  {started.replace('+00:00', 'Z')}"
    ]

    def walk(nodes: list[SpanNode], prefix: str, parent: SpanRecord | None) -> None:
        for index, node in enumerate(nodes):
            last = index == len(nodes) - 1
            lines.append(f"{prefix}{'└─ ' if last else '├─ '}{_line(node, parent)}")
            walk(node.children, prefix + ("   " if last else "│  "), node.span)

    walk(tree.roots, "", None)
    return "\n".join(lines)


def read_trace_dir(directory: Path) -> list[SpanRecord]:
    spans: list[SpanRecord] = []
    if not directory.is_dir():
        return spans
    for path in sorted(directory.glob("*.jsonl")):
        with path.open("rb") as lines:
            spans += load_spans(lines)
    return spans


def run(directory: Path, last: int, out: TextIO) -> int:
    trees = build_traces(read_trace_dir(directory))
    if not trees:
        out.write(f"no traces recorded yet in {directory}\n")
        return 0
    for tree in trees[-max(last, 1) :]:
        out.write(render_trace(tree) + "\n\n")
    return 0
