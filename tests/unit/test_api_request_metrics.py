"""The app API's request latency is labelled by the route's template, never the concrete path,
so no id in a URL (and no made-up method) becomes a series of its own."""

from __future__ import annotations

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from services.api.metrics import RequestMetrics
from tests.support.metrics import sample

COUNT = "poscal_api_request_duration_seconds_count"


async def one_connection(request: Request) -> Response:
    if request.path_params["connection_id"] == "missing":
        return JSONResponse({"error": "not_found"}, 404)
    return JSONResponse({"id": request.path_params["connection_id"]})


def app() -> Starlette:
    routes = [Route("/v1/connections/{connection_id}", one_connection, methods=["GET"])]
    app = Starlette(routes=routes)
    app.add_middleware(RequestMetrics)
    return app


async def requests(*calls: tuple[str, str]) -> list[int]:
    transport = httpx.ASGITransport(app=app())
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
        return [(await client.request(method, path)).status_code for method, path in calls]


async def test_requests_are_counted_under_their_route_template_and_status() -> None:
    template = "/v1/connections/{connection_id}"
    ok_before = sample(COUNT, method="GET", route=template, status="200")
    missing_before = sample(COUNT, method="GET", route=template, status="404")
    assert await requests(
        ("GET", "/v1/connections/7c1e"),
        ("GET", "/v1/connections/9a2f"),
        ("GET", "/v1/connections/missing"),
    ) == [200, 200, 404]
    assert sample(COUNT, method="GET", route=template, status="200") == ok_before + 2
    assert sample(COUNT, method="GET", route=template, status="404") == missing_before + 1
    assert sample(COUNT, method="GET", route="/v1/connections/7c1e", status="200") == 0


async def test_unknown_paths_and_methods_are_counted_without_their_own_labels() -> None:
    unmatched_before = sample(COUNT, method="GET", route="unmatched", status="404")
    other_before = sample(
        COUNT, method="other", route="/v1/connections/{connection_id}", status="405"
    )
    assert await requests(("GET", "/v1/no/such/route/4711"), ("BREW", "/v1/connections/1")) == [
        404,
        405,
    ]
    assert sample(COUNT, method="GET", route="unmatched", status="404") == unmatched_before + 1
    assert (
        sample(COUNT, method="other", route="/v1/connections/{connection_id}", status="405")
        == other_before + 1
    )
    assert sample(COUNT, method="BREW", route="/v1/connections/{connection_id}", status="405") == 0
