"""The poller's Prometheus metrics, served on POSCAL_POLLER_METRICS_PORT when set."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

SYNCS = Counter("poscal_poller_syncs", "Connection syncs by outcome", ["broker", "outcome"])
PAGES = Counter("poscal_poller_pages_published", "Delta pages published", ["broker"])
ALERTS = Counter(
    "poscal_poller_alerts",
    "Connections turned to status error (repeated failures or refused credentials)",
    ["reason"],
)
RECONCILIATION_GAPS = Gauge(
    "poscal_reconciliation_gaps",
    "Connections whose last reconciliation found gaps of this kind (missing_deals, balance_drift)",
    ["broker", "kind"],
)
