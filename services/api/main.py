"""The app API's entrypoint: settings, logging and tracing once, then uvicorn until signalled."""

from __future__ import annotations

import uvicorn

from services.api.app import create_app
from services.api.settings import ApiSettings
from services.shared.logging import setup_logging
from services.shared.tracing import setup_tracing


def main() -> int:
    settings = ApiSettings()
    setup_logging("api", settings.log_level, settings.log_format)
    provider = setup_tracing("poscal-api", settings.trace_file)
    server: uvicorn.Server | None = None
    fatal: list[BaseException] = []

    def give_up(exc: BaseException) -> None:
        fatal.append(exc)
        if server is not None:
            server.should_exit = True

    server = uvicorn.Server(
        uvicorn.Config(
            create_app(settings, on_fatal=give_up),
            host=settings.host,
            port=settings.port,
            log_level="warning",
            access_log=False,
            server_header=False,
            # Client addresses are the API's to work out, from POSCAL_API_TRUSTED_PROXIES only.
            proxy_headers=False,
        )
    )
    try:
        server.run()
    finally:
        provider.shutdown()
    # 3 is what uvicorn itself exits with when the application fails to start.
    return 3 if fatal or not server.started else 0
