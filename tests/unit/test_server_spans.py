"""Server spans come from OpenTelemetry's ASGI instrumentation, which no request bytes can break:
the application still reads every header and the query exactly as sent, and the request still has
its span."""

from __future__ import annotations

import orjson
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Message

from services.shared.server_spans import ServerSpans


async def echo(request: Request) -> Response:
    return JSONResponse(
        {
            "header": request.scope["headers"][-1][1].hex(),
            "query": request.scope["query_string"].hex(),
        }
    )


APP = Starlette(
    routes=[Route("/echo", echo)],
    middleware=[Middleware(ServerSpans, exclude_spans=["receive", "send"])],
)


async def get(
    headers: list[tuple[bytes, bytes]], query: bytes = b"", app: Starlette = APP
) -> tuple[int, dict[str, str]]:
    """The app's answer to a GET of exactly these bytes (as a server hands them over: no client
    library would send them)."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/echo",
        "raw_path": b"/echo",
        "query_string": query,
        "root_path": "",
        "headers": [(b"host", b"ingest.test"), *headers],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8080),
    }
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    await app(scope, receive, send)
    body = b"".join(m["body"] for m in sent if m["type"] == "http.response.body")
    return sent[0]["status"], orjson.loads(body)


@pytest.mark.parametrize(
    "value",
    [b"\x80\\", b"\xff", b"caf\xc3\xa9", b"\\", b"plain"],
    ids=["not-utf8-trailing-backslash", "not-utf8", "utf8", "backslash", "ascii"],
)
@pytest.mark.parametrize("name", [b"user-agent", b"x-anything"])
async def test_any_header_bytes_reach_the_app_exactly_and_the_request_has_its_span(
    name: bytes, value: bytes, spans: InMemorySpanExporter
) -> None:
    spans.clear()
    status, echoed = await get([(name, value)])

    assert status == 200
    assert bytes.fromhex(echoed["header"]) == value
    assert [span.name for span in spans.get_finished_spans()] == ["GET /echo"]


async def test_a_query_that_is_not_utf8_reaches_the_app_exactly(
    spans: InMemorySpanExporter,
) -> None:
    spans.clear()
    status, echoed = await get([(b"x-anything", b"ok")], query=b"token=\xff\\")

    assert status == 200
    assert bytes.fromhex(echoed["query"]) == b"token=\xff\\"
    assert len(spans.get_finished_spans()) == 1


async def test_credential_headers_reach_the_app_but_never_a_span_even_when_captured(
    spans: InMemorySpanExporter,
) -> None:
    """Configured to record them (as OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_REQUEST
    would), the instrumentation still records an ordinary header and no credential."""
    capturing = Starlette(
        routes=[Route("/echo", echo)],
        middleware=[
            Middleware(
                ServerSpans,
                exclude_spans=["receive", "send"],
                http_capture_headers_server_request=[".*"],
            )
        ],
    )
    spans.clear()
    status, echoed = await get(
        [(b"x-anything", b"visible"), (b"cookie", b"c=1"), (b"authorization", b"Bearer t0k")],
        app=capturing,
    )

    assert status == 200
    assert bytes.fromhex(echoed["header"]) == b"Bearer t0k"
    (span,) = spans.get_finished_spans()
    recorded = orjson.dumps(dict(span.attributes or {})).decode()
    assert "visible" in recorded
    assert "t0k" not in recorded and "c=1" not in recorded
