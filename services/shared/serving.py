"""An HTTP service's process: uvicorn until signalled, stopped early by a start-up failure no
wait can fix, with uvicorn's own exit status for an application that failed to start."""

from __future__ import annotations

from collections.abc import Callable

import uvicorn

OnFatal = Callable[[BaseException], None]


def serve_until_signalled(config: Callable[[OnFatal], uvicorn.Config]) -> int:
    """Run the server `config` describes; it is handed the callback its application calls with
    a fatal start-up failure. 0 when signalled, 3 when the application did not start."""
    server: uvicorn.Server | None = None
    fatal: list[BaseException] = []

    def give_up(exc: BaseException) -> None:
        fatal.append(exc)
        if server is not None:
            server.should_exit = True

    server = uvicorn.Server(config(give_up))
    server.run()
    # 3 is what uvicorn itself exits with when the application fails to start.
    return 3 if fatal or not server.started else 0
