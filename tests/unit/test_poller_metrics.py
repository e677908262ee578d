"""The poller's metrics endpoint serves its counters, and stops when told."""

from __future__ import annotations

import httpx
import pytest

from services.devstack.ports import free_port
from services.poller.metrics import serve_metrics


def test_the_metrics_endpoint_exposes_the_poller_alerts_and_stops_when_told() -> None:
    port = free_port()
    stop = serve_metrics("127.0.0.1", port)
    try:
        answer = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
    finally:
        stop()
    assert answer.status_code == 200
    assert "# TYPE poscal_poller_alerts_total counter" in answer.text
    assert "poscal_poller_syncs_total" in answer.text
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=1)
