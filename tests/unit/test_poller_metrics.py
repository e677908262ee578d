"""The poller's metrics endpoint serves its counters, and stops when told."""

from __future__ import annotations

import httpx
import pytest

from services.devstack.ports import free_port
from services.poller import metrics as poller_metrics
from services.shared.metrics_server import start_metrics_server


def test_the_metrics_endpoint_exposes_the_poller_alerts_and_stops_when_told() -> None:
    assert poller_metrics.ALERTS is not None  # the poller's counters, registered by its module
    port = free_port()
    stop = start_metrics_server("127.0.0.1", port)
    try:
        answer = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
    finally:
        stop()
    assert answer.status_code == 200
    assert "# TYPE poscal_poller_alerts_total counter" in answer.text
    assert "poscal_poller_syncs_total" in answer.text
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=1)
