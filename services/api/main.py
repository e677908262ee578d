"""The app API's entrypoint: settings, logging and tracing once, then uvicorn until signalled."""

from __future__ import annotations

import contextlib

import uvicorn

from services.api.app import create_app
from services.api.settings import ApiSettings
from services.shared.logging import setup_logging
from services.shared.metrics_server import serve_metrics
from services.shared.serving import serve_until_signalled
from services.shared.tracing import setup_tracing


def main() -> int:
    settings = ApiSettings()
    setup_logging("api", settings.log_level, settings.log_format)
    provider = setup_tracing("poscal-api", settings.trace_file)
    try:
        with contextlib.ExitStack() as stack:
            serve_metrics(stack, settings.metrics_host, settings.metrics_port)
            return serve_until_signalled(
                lambda give_up: uvicorn.Config(
                    create_app(settings, on_fatal=give_up),
                    host=settings.host,
                    port=settings.port,
                    log_level="warning",
                    access_log=False,
                    server_header=False,
                    # Client addresses are the API's to work out, from POSCAL_API_TRUSTED_PROXIES.
                    proxy_headers=False,
                )
            )
    finally:
        provider.shutdown()
