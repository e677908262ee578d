"""The benchmarks' load generator against a tiny local HTTP/1.1 server: every request sent once
and answered with its own status, over the connections asked for, whatever the pace. Counts
and statuses only, never timings."""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

from bench.load_generator import (
    NO_ANSWER,
    Address,
    LoadResult,
    ProtocolError,
    ResponseReader,
    Webhook,
    at_fixed_rate,
    at_saturation,
    request_bytes,
    signed_webhook,
    signed_webhooks,
)
from services.shared.signatures import decode_secret, parse_headers, verify


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class TinyServer:
    """Answers `/status/N` with N, `/close/N` with N and `connection: close`, drops the
    connection unanswered on `/drop`, and never answers `/hang`."""

    address: Address
    requests: list[Received] = field(default_factory=list)
    connections: int = 0
    handlers: set[asyncio.Task[None]] = field(default_factory=set)


async def _serve(
    server: TinyServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    server.connections += 1
    task = asyncio.current_task()
    assert task is not None
    server.handlers.add(task)
    try:
        while head := await reader.readuntil(b"\r\n\r\n"):
            request_line, *lines = head.decode("latin-1").split("\r\n")[:-2]
            method, path, _ = request_line.split(" ")
            headers = {
                name.strip().lower(): value.strip()
                for name, _, value in (line.partition(":") for line in lines)
            }
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            server.requests.append(Received(method, path, headers, body))
            action, _, code = path.strip("/").partition("/")
            if action == "drop":
                return
            if action == "hang":
                await asyncio.Event().wait()
            answer = b'{"ok":true}'
            close = b"connection: close\r\n" if action == "close" else b""
            writer.write(
                f"HTTP/1.1 {code} X\r\ncontent-type: application/json\r\n".encode()
                + close
                + f"content-length: {len(answer)}\r\n\r\n".encode()
                + answer
            )
            await writer.drain()
            if close:
                return
    except (asyncio.IncompleteReadError, ConnectionError):
        return
    finally:
        server.handlers.discard(task)
        writer.close()


@contextlib.asynccontextmanager
async def tiny_server() -> AsyncIterator[TinyServer]:
    holder: list[TinyServer] = []
    listener = await asyncio.start_server(lambda r, w: _serve(holder[0], r, w), "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    holder.append(TinyServer(Address("127.0.0.1", port)))
    try:
        yield holder[0]
    finally:
        listener.close()
        await listener.wait_closed()
        handlers = list(holder[0].handlers)
        for handler in handlers:
            handler.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)


def _get(address: Address, path: str) -> bytes:
    return request_bytes(address, "GET", path, [], b"")


async def test_saturation_sends_every_request_once_and_records_each_status() -> None:
    async with tiny_server() as server:
        paths = [f"/status/{202 if i % 3 else 409}" for i in range(60)]
        result = await at_saturation(
            server.address, [_get(server.address, p) for p in paths], connections=4
        )
    assert result.statuses == tuple(int(p.rsplit("/", 1)[1]) for p in paths)
    assert sorted(r.path for r in server.requests) == sorted(paths)
    assert server.connections == 4
    assert result.status_counts == {202: 40, 409: 20}
    assert result.answered == 60
    assert result.max_send_lag_s is None


async def test_fixed_rate_sends_every_request_once_and_records_each_status() -> None:
    async with tiny_server() as server:
        paths = [f"/status/{200 + i % 5}" for i in range(40)]
        result = await at_fixed_rate(
            server.address, [_get(server.address, p) for p in paths], rate=2000, connections=3
        )
    assert result.statuses == tuple(200 + i % 5 for i in range(40))
    assert sorted(r.path for r in server.requests) == sorted(paths)
    assert server.connections == 3
    assert result.offered_rate == 2000
    assert result.max_send_lag_s is not None


@pytest.mark.parametrize("mode", ["saturation", "fixed_rate"])
async def test_a_connection_the_server_closes_is_replaced(mode: str) -> None:
    async with tiny_server() as server:
        requests = [_get(server.address, "/close/200") for _ in range(10)]
        if mode == "saturation":
            result = await at_saturation(server.address, requests, connections=1)
        else:
            result = await at_fixed_rate(server.address, requests, rate=5000, connections=1)
    assert result.statuses == (200,) * 10
    # Told `connection: close`, it never sends a second request on the same connection.
    assert server.connections == 10


async def test_a_request_whose_connection_drops_has_no_answer_and_the_rest_go_on() -> None:
    async with tiny_server() as server:
        paths = ["/status/202", "/drop", "/status/202", "/status/202"]
        result = await at_saturation(
            server.address, [_get(server.address, p) for p in paths], connections=1
        )
    assert result.statuses == (202, NO_ANSWER, 202, 202)
    assert result.answered == 3
    assert server.connections == 2


@pytest.mark.parametrize("mode", ["saturation", "fixed_rate"])
async def test_requests_left_unanswered_are_given_up_with_no_answer(mode: str) -> None:
    async with tiny_server() as server:
        requests = [_get(server.address, p) for p in ["/status/201", "/hang", "/status/201"]]
        if mode == "saturation":
            result = await at_saturation(server.address, requests, connections=2, timeout_s=0.2)
        else:
            result = await at_fixed_rate(
                server.address, requests, rate=1000, connections=2, timeout_s=0.2
            )
    assert result.statuses == (201, NO_ANSWER, 201)
    assert len(server.requests) == 3


async def test_signed_webhooks_verify_with_their_key_under_unique_ids() -> None:
    key = decode_secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
    async with tiny_server() as server:
        bodies = [b'{"n":%d}' % i for i in range(5)]
        requests = [
            signed_webhook(server.address, "/status/202", key, body, f"msg_{i}", 1_700_000_000)
            for i, body in enumerate(bodies)
        ]
        result = await at_saturation(server.address, requests, connections=2)
    assert result.statuses == (202,) * 5
    seen = sorted(server.requests, key=lambda r: r.headers["webhook-id"])
    assert [r.body for r in seen] == bodies
    for received in seen:
        assert received.method == "POST"
        assert received.headers["content-type"] == "application/json"
        verify(parse_headers(received.headers), received.body, [key])
    assert len({r.headers["webhook-id"] for r in seen}) == 5


def test_responses_are_read_however_the_stream_is_cut() -> None:
    stream = (
        b"HTTP/1.1 202 Accepted\r\ncontent-length: 5\r\n\r\nhello"
        b"HTTP/1.1 204 No Content\r\n\r\n"
        b"HTTP/1.1 409 Conflict\r\nConnection: close\r\nContent-Length: 2\r\n\r\n{}"
    )
    for size in (1, 2, 7, len(stream)):
        reader = ResponseReader()
        heads = [
            head
            for at in range(0, len(stream), size)
            for head in reader.feed(stream[at : at + size])
        ]
        assert [(h.status, h.content_length, h.closes) for h in heads] == [
            (202, 5, False),
            (204, 0, False),
            (409, 2, True),
        ]


def test_a_chunked_response_is_refused_as_a_protocol_error() -> None:
    with pytest.raises(ProtocolError):
        ResponseReader().feed(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")


def test_a_result_answers_rates_shares_and_percentiles_by_status() -> None:
    result = LoadResult(
        statuses=(202, 202, 409, NO_ANSWER, 202),
        latencies_s=(0.3, 0.1, 0.5, 9.0, 0.2),
        wall_seconds=2.0,
        cpu_seconds=0.5,
    )
    assert result.answered == 4
    assert result.count(202) == 3
    assert result.rate() == 2.0
    assert result.rate(202) == 1.5
    assert result.cpu_share == 0.25
    assert result.latency_percentile(0.5, 202) == 0.2
    assert result.latency_percentile(1.0, 202) == 0.3
    assert result.latency_percentile(1.0) == 0.5  # what had no answer is no latency
    assert math.isnan(result.latency_percentile(0.5, 500))


async def test_many_signed_webhooks_verify_each_under_an_id_of_its_own() -> None:
    key = decode_secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
    async with tiny_server() as server:
        webhooks = [Webhook(f"/status/{202 + i % 2}", key, b"[%d]" % i) for i in range(6)]
        first = signed_webhooks(server.address, webhooks, timestamp=1_700_000_000)
        again = signed_webhooks(server.address, webhooks)
        result = await at_fixed_rate(server.address, first + again, rate=3000, connections=2)
    assert result.status_counts == {202: 6, 203: 6}
    assert len({r.headers["webhook-id"] for r in server.requests}) == 12
    for received in server.requests:
        verify(parse_headers(received.headers), received.body, [key])
    timestamps = {r.headers["webhook-timestamp"] for r in server.requests}
    assert "1700000000" in timestamps and len(timestamps) == 2
