"""The ingest entrypoint: settings, logging and tracing once, then uvicorn."""

from __future__ import annotations

import uvicorn

from services.ingest.app import create_app
from services.ingest.settings import IngestSettings
from services.shared.logging import setup_logging
from services.shared.tracing import setup_tracing


def main() -> int:
    settings = IngestSettings()
    setup_logging("ingest", settings.log_level, settings.log_format)
    provider = setup_tracing("poscal-ingest", settings.trace_file)
    try:
        uvicorn.run(
            create_app(settings),
            host=settings.host,
            port=settings.port,
            log_level="warning",
            access_log=False,
            server_header=False,
        )
    finally:
        provider.shutdown()
    return 0
