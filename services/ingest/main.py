"""The ingest entrypoint: settings, logging and tracing once, then uvicorn until signalled."""

from __future__ import annotations

import uvicorn
from starlette.types import ASGIApp

from services.ingest.app import create_app
from services.ingest.settings import IngestSettings
from services.shared.logging import setup_logging
from services.shared.serving import serve_until_signalled
from services.shared.tracing import setup_tracing


def server_config(app: ASGIApp, settings: IngestSettings) -> uvicorn.Config:
    """uvicorn as ingest runs it: idle keep-alive connections closed after the configured
    time. The concurrency limit and body timeout are ingest's own (request_bounds.py): uvicorn's
    `limit_concurrency` counts idle connections too and answers without Retry-After."""
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        timeout_keep_alive=settings.keepalive_timeout_seconds,
        log_level="warning",
        access_log=False,
        server_header=False,
    )


def main() -> int:
    settings = IngestSettings()
    setup_logging("ingest", settings.log_level, settings.log_format)
    provider = setup_tracing("poscal-ingest", settings.trace_file)
    try:
        return serve_until_signalled(
            lambda give_up: server_config(create_app(settings, on_fatal=give_up), settings)
        )
    finally:
        provider.shutdown()
