"""A service's Prometheus metrics on a port of their own (for services that serve no HTTP)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

from prometheus_client import start_http_server


def start_metrics_server(host: str, port: int) -> Callable[[], None]:
    """Serve /metrics (in a background thread) on host:port; returns how to stop serving."""
    server, thread = start_http_server(port, addr=host)

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join()

    return stop


def serve_metrics(
    stack: contextlib.ExitStack | contextlib.AsyncExitStack, host: str, port: int | None
) -> bool:
    """Serve /metrics on host:port until `stack` unwinds, if a port is set; whether it is."""
    if not port:
        return False
    stack.callback(start_metrics_server(host, port))
    return True
