"""An ASGI app served by uvicorn on a free loopback port, in a background thread, so the code
under test speaks real HTTP through its real client: `with ServedApp(app) as served:`.

`RequestTally` counts what a fake server was asked, per path, and the most requests it had in
flight at once per key (an account, a token), for specifications about load and concurrency.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Self

import uvicorn
from starlette.types import ASGIApp

from services.devstack.ports import LocalServer


class RequestTally:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._paths: Counter[str] = Counter()
        self._in_flight: Counter[str] = Counter()
        self._most_in_flight: Counter[str] = Counter()

    @contextlib.contextmanager
    def request(self, path: str, key: str) -> Iterator[None]:
        with self._lock:
            self._paths[path] += 1
            self._in_flight[key] += 1
            self._most_in_flight[key] = max(self._most_in_flight[key], self._in_flight[key])
        try:
            yield
        finally:
            with self._lock:
                self._in_flight[key] -= 1

    def count(self, path_suffix: str = "") -> int:
        """Requests whose path ends with `path_suffix` (all of them for "")."""
        with self._lock:
            return sum(n for path, n in self._paths.items() if path.endswith(path_suffix))

    def most_concurrent(self, key: str) -> int:
        with self._lock:
            return self._most_in_flight[key]


class ServedApp(LocalServer):
    def __init__(self, app: ASGIApp, *, startup_timeout: float = 10.0) -> None:
        self._app = app
        self._startup_timeout = startup_timeout
        self._socket: socket.socket | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._url: str | None = None

    @property
    def url(self) -> str:
        if self._url is None:
            raise RuntimeError("the server was never started")
        return self._url

    def start(self) -> Self:
        # Bound here and handed to uvicorn: no window in which another process takes the port.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # Inherited by accepted connections: without it Nagle meets delayed ACKs, 40 ms a request.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind(("127.0.0.1", 0))
        self._socket = sock
        self._url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        config = uvicorn.Config(
            self._app, lifespan="off", log_level="warning", access_log=False, loop="asyncio"
        )
        server = uvicorn.Server(config)
        self._server = server
        self._thread = threading.Thread(
            target=server.run, kwargs={"sockets": [sock]}, name="served-app", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + self._startup_timeout
        while not server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("the served app did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self._socket is not None:
            self._socket.close()
        self._server = self._thread = self._socket = None
