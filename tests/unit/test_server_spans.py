"""Server spans, which no request bytes can break: the application still reads every header and
the query exactly as sent, and the request still has its span, named by its route, continuing
the caller's trace, with no query and no credential in it."""

from __future__ import annotations

import orjson
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
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


async def fail(request: Request) -> Response:
    return JSONResponse({"error": "unavailable"}, 503)


async def crash(request: Request) -> Response:
    raise RuntimeError("boom")


ROUTES = [
    Route("/echo", echo),
    Route("/items/{item_id}", echo),
    Route("/fail", fail),
    Route("/crash", crash),
    Route("/healthz", echo),
]
APP = Starlette(routes=ROUTES, middleware=[Middleware(ServerSpans, untraced_paths=["/healthz"])])


async def get(
    headers: list[tuple[bytes, bytes]],
    query: bytes = b"",
    app: Starlette = APP,
    path: str = "/echo",
) -> tuple[int, dict[str, str]]:
    """The app's answer to a GET of exactly these bytes (as a server hands them over: no client
    library would send them)."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
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
    return sent[0]["status"], orjson.loads(body) if body.startswith(b"{") else {}


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
        middleware=[Middleware(ServerSpans, capture_request_headers=[".*"])],
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


async def test_a_span_is_named_by_its_route_and_records_no_query(
    spans: InMemorySpanExporter,
) -> None:
    spans.clear()
    status, _ = await get([(b"user-agent", b"EA/1.0")], query=b"secret=s3cr3t", path="/items/42")

    assert status == 200
    (span,) = spans.get_finished_spans()
    assert span.name == "GET /items/{item_id}"
    assert span.kind is SpanKind.SERVER
    attributes = dict(span.attributes or {})
    assert attributes["http.route"] == "/items/{item_id}"
    assert attributes["http.target"] == "/items/42"
    assert attributes["http.url"] == "http://ingest.test/items/42"
    assert attributes["http.method"] == "GET"
    assert attributes["http.status_code"] == 200
    assert attributes["http.user_agent"] == "EA/1.0"
    assert attributes["net.peer.ip"] == "127.0.0.1"
    assert "s3cr3t" not in orjson.dumps(attributes).decode()
    assert span.status.status_code is StatusCode.UNSET


async def test_a_span_continues_the_callers_trace(spans: InMemorySpanExporter) -> None:
    spans.clear()
    trace_id, parent_id = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    await get([(b"traceparent", f"00-{trace_id}-{parent_id}-01".encode())])

    (span,) = spans.get_finished_spans()
    assert f"{span.context.trace_id:032x}" == trace_id
    assert span.parent is not None and f"{span.parent.span_id:016x}" == parent_id


async def test_a_5xx_answer_or_an_exception_is_an_error_span(spans: InMemorySpanExporter) -> None:
    spans.clear()
    status, _ = await get([], path="/fail")
    with pytest.raises(RuntimeError):
        await get([], path="/crash")

    assert status == 503
    failed, crashed = spans.get_finished_spans()
    assert failed.status.status_code is StatusCode.ERROR
    assert dict(failed.attributes or {})["http.status_code"] == 503
    assert crashed.status.status_code is StatusCode.ERROR
    assert [event.name for event in crashed.events] == ["exception"]


async def test_untraced_paths_have_no_span(spans: InMemorySpanExporter) -> None:
    spans.clear()
    status, _ = await get([], path="/healthz")

    assert status == 200
    assert spans.get_finished_spans() == ()
