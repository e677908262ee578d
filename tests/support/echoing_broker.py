"""A broker API stand-in on localhost that refuses every request with 401 and echoes the
credentials it was sent in its error message, as careless APIs and proxies do. It remembers
each request's path and headers, so a test can tell the credentials were really used."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.support.served_app import ServedApp


class EchoingBroker(ServedApp):
    def __init__(self) -> None:
        self.requests: list[tuple[str, dict[str, str]]] = []  # (path, headers)
        super().__init__(Starlette(routes=[Route("/{path:path}", self._refuse)]))

    async def _refuse(self, request: Request) -> Response:
        headers = {name.lower(): value for name, value in request.headers.items()}
        self.requests.append((request.url.path, headers))
        received = headers.get("authorization", "no credentials")
        return JSONResponse(
            {"errorMessage": f"Insufficient authorization to perform request: {received}"}, 401
        )
