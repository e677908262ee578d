"""Running a service until SIGINT or SIGTERM, then letting it finish its batch and stop."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path

from services.shared.logging import setup_logging
from services.shared.settings import ServiceSettings
from services.shared.tracing import setup_tracing


def run_service(
    name: str, settings: ServiceSettings, serve: Callable[[asyncio.Event], Awaitable[None]]
) -> int:
    """A consumer service's whole life: logging and tracing once, serve until signalled."""
    setup_logging(name, settings.log_level, settings.log_format)
    provider = setup_tracing(f"poscal-{name}", settings.trace_file)
    try:
        return run_until_signalled(serve)
    finally:
        provider.shutdown()


def run_until_signalled(serve: Callable[[asyncio.Event], Awaitable[None]]) -> int:
    async def _main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await serve(stop)

    asyncio.run(_main())
    return 0


def mark_ready(ready_file: Path | None) -> None:
    """Tell a supervisor (the dev stack, an exec probe) that this service is ready."""
    if ready_file is not None:
        ready_file.parent.mkdir(parents=True, exist_ok=True)
        ready_file.touch()
