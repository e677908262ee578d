"""A broker API stand-in on localhost that refuses every request with 401 and echoes the
credentials it was sent in its error message, as careless APIs and proxies do. It remembers
each request's path and headers, so a test can tell the credentials were really used."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType

import orjson


class EchoingBroker:
    def __init__(self) -> None:
        self.requests: list[tuple[str, dict[str, str]]] = []  # (path, headers)
        broker = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                headers = {name.lower(): value for name, value in self.headers.items()}
                broker.requests.append((self.path, headers))
                received = headers.get("authorization", "no credentials")
                body = orjson.dumps(
                    {"errorMessage": f"Insufficient authorization to perform request: {received}"}
                )
                self.send_response(401)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_: object) -> None:
                return None

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> EchoingBroker:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
