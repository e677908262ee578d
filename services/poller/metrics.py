"""The poller's Prometheus metrics, served on POSCAL_POLLER_METRICS_PORT when set."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

SYNCS = Counter("poscal_poller_syncs", "Connection syncs by outcome", ["broker", "outcome"])
SYNC_SECONDS = Histogram(
    "poscal_poller_sync_duration_seconds",
    "How long one connection's sync took, from its lease to its outcome, by broker and outcome",
    ["broker", "outcome"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600),
)
PAGES = Counter("poscal_poller_pages_published", "Delta pages published", ["broker"])
ALERTS = Counter(
    "poscal_poller_alerts",
    "Connections turned to status error (repeated failures or refused credentials)",
    ["reason"],
)

# Read from Postgres every POSCAL_POLLER_GAUGES_SECONDS (gauges.py): the same for every replica,
# so aggregate them with max, not sum.
CONNECTIONS_DUE = Gauge(
    "poscal_poller_connections_due",
    "Polled connections due for a sync and not leased (and leasable: active, with a credential"
    " the broker has not refused), by broker",
    ["broker"],
)
CONNECTIONS_LEASED = Gauge(
    "poscal_poller_connections_leased",
    "Polled connections leased by a poller replica now (being synced), by broker",
    ["broker"],
)
CONNECTIONS_FAILING = Gauge(
    "poscal_poller_connections_failing",
    "Polled connections whose last sync failed (one or more failures in a row), by broker",
    ["broker"],
)
MAX_CONSECUTIVE_FAILURES = Gauge(
    "poscal_poller_max_consecutive_failures",
    "The longest run of failed syncs in a row of any polled connection now, by broker",
    ["broker"],
)
CREDENTIALS_NEEDING_ROTATION = Gauge(
    "poscal_credentials_rotation_needed",
    "Connections (not revoked) whose newest active credential of a kind needs rotating: state"
    " warning (over 60 days old), due (over 90) or forced (repeated failed verifications, or"
    " refused by the broker)",
    ["kind", "state"],
)
DATA_KEYS_NOT_CURRENT = Gauge(
    "poscal_data_keys_not_under_current_kek",
    "User data keys wrapped under a key-encryption key other than the current one: what"
    " `poscal-sync keys rotate` has still to re-wrap",
)
GAUGES_READ_AT = Gauge(
    "poscal_poller_gauges_read_timestamp_seconds",
    "When the gauges read from Postgres were last read successfully (Unix time)",
)
RECONCILIATION_GAPS = Gauge(
    "poscal_reconciliation_gaps",
    "Connections whose last reconciliation found gaps of this kind (missing_deals, balance_drift)",
    ["broker", "kind"],
)
