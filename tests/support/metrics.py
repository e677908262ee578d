"""Reading the services' Prometheus metrics as a scrape would, in-process."""

from __future__ import annotations

from prometheus_client import REGISTRY


def sample(name: str, **labels: str) -> float:
    """A sample's value now, 0 for one not exported yet (a counter never incremented)."""
    return REGISTRY.get_sample_value(name, labels) or 0.0
