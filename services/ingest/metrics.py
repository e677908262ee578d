"""Ingest's Prometheus metrics, served at /metrics. Labels come from fixed code sets only."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, Counter, generate_latest
from starlette.requests import Request
from starlette.responses import Response

WEBHOOKS = Counter(
    "poscal_ingest_webhooks",
    "Webhook deliveries by outcome and reason code",
    ["outcome", "reason"],
)
VERIFICATION_ALERTS = Counter(
    "poscal_ingest_verification_alerts",
    "Sources that reached POSCAL_FAILURE_ALERT_THRESHOLD failed verifications of one connection"
    " (alert on any increase)",
)
AUDIT_DROPPED = Counter(
    "poscal_ingest_audit_records_dropped",
    "Attempt records dropped because the audit queue was full (the database was unreachable)",
)
AUDIT_FLUSH_FAILURES = Counter(
    "poscal_ingest_audit_flush_failures", "Failed attempts to write a batch of attempt records"
)
AUDIT_GAPS = Counter(
    "poscal_ingest_audit_gaps",
    "Audit gaps recorded: windows in which an instance's attempt records may be missing",
    ["reason"],
)
OVERLOADED = Counter(
    "poscal_ingest_overloaded",
    "Requests answered 503 at once because the concurrency limit was reached (not audited)",
)
NOT_READY = Counter(
    "poscal_ingest_not_ready",
    "Webhooks answered 503 while ingest was still waiting for Postgres or Kafka (not audited)",
)


async def metrics_endpoint(_: Request) -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
