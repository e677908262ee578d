"""The poller's Prometheus metrics, served on POSCAL_POLLER_METRICS_PORT when set."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import Counter, start_http_server

SYNCS = Counter("poscal_poller_syncs", "Connection syncs by outcome", ["broker", "outcome"])
PAGES = Counter("poscal_poller_pages_published", "Delta pages published", ["broker"])
ALERTS = Counter(
    "poscal_poller_alerts",
    "Connections turned to status error (repeated failures or refused credentials)",
    ["reason"],
)


def serve_metrics(host: str, port: int) -> Callable[[], None]:
    """Serve /metrics (in a background thread) on host:port; returns how to stop serving."""
    server, thread = start_http_server(port, addr=host)

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join()

    return stop
