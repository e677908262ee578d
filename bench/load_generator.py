"""A light HTTP/1.1 load generator for the benchmarks: requests built (and signed) before the
run, sent over raw keep-alive connections by asyncio protocols, at a fixed rate or at saturation.

The client must cost far less CPU per request than the servers it measures, or on two cores it
sets the pace itself (httpx did). So nothing is built during a run: each request is its bytes,
written whole; a response is read only as far as its status line and `content-length`.

- `signed_webhook(...)` builds one Standard Webhooks request; `signed_webhooks(...)` many,
  each under a webhook id of its own and a fresh timestamp.
- `at_fixed_rate(...)` is open-loop: request i is due at `start + i / rate` whether or not the
  server has answered the earlier ones, and its latency counts from when it was due, so a server
  that falls behind shows it in the latency (no coordinated omission).
- `at_saturation(...)` is closed-loop: each connection sends its next request as soon as the last
  is answered; latency counts from the send.

Both return a `LoadResult`: every request's status (0: no answer, the connection failed or closed
before it) and latency, the achieved rate, and the generator's own CPU share of the wall time
(near 1.0 it, not the server, was the limit).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections import Counter, deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from bench.stats import percentile
from services.shared.signatures import sign

NO_ANSWER = 0
_HEAD_END = b"\r\n\r\n"


@dataclass(frozen=True)
class Address:
    host: str
    port: int

    @property
    def authority(self) -> str:
        return f"{self.host}:{self.port}"


def request_bytes(
    address: Address, method: str, path: str, headers: Iterable[tuple[str, str]], body: bytes
) -> bytes:
    """One whole HTTP/1.1 request, keep-alive, with its `content-length`."""
    lines = [f"{method} {path} HTTP/1.1", f"host: {address.authority}"]
    lines += [f"{name}: {value}" for name, value in headers]
    lines.append(f"content-length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def signed_webhook(
    address: Address, path: str, key: bytes, body: bytes, webhook_id: str, timestamp: int
) -> bytes:
    """A JSON webhook POST signed `v1` (HMAC-SHA256) as Standard Webhooks says. The timestamp
    must still be within the receiver's tolerance when it is sent: build shortly before."""
    headers = [
        ("content-type", "application/json"),
        ("webhook-id", webhook_id),
        ("webhook-timestamp", str(timestamp)),
        ("webhook-signature", sign(key, webhook_id, timestamp, body)),
    ]
    return request_bytes(address, "POST", path, headers, body)


@dataclass(frozen=True)
class Webhook:
    """One delivery to sign: where it goes, the key it is signed with, its body."""

    path: str
    key: bytes
    body: bytes


def signed_webhooks(
    address: Address, webhooks: Iterable[Webhook], timestamp: int | None = None
) -> list[bytes]:
    """Each webhook signed under a webhook id of its own (unique across runs too), all with
    one timestamp (now by default)."""
    run = uuid.uuid4().hex[:12]
    at = int(time.time()) if timestamp is None else timestamp
    return [
        signed_webhook(address, w.path, w.key, w.body, f"msg_{run}_{i}", at)
        for i, w in enumerate(webhooks)
    ]


@dataclass(frozen=True)
class LoadResult:
    """What one run gave: `statuses[i]` and `latencies_s[i]` are request i's (a request with no
    answer has status 0 and the time until it was given up)."""

    statuses: tuple[int, ...]
    latencies_s: tuple[float, ...]
    wall_seconds: float
    cpu_seconds: float
    # Open-loop only: the most a request was written after it was due while a connection was
    # free for it: the generator itself falling behind (None for saturation).
    max_send_lag_s: float | None = None
    offered_rate: float | None = None

    @property
    def status_counts(self) -> dict[int, int]:
        return dict(sorted(Counter(self.statuses).items()))

    @property
    def answered(self) -> int:
        return sum(1 for status in self.statuses if status != NO_ANSWER)

    def count(self, status: int) -> int:
        return sum(1 for s in self.statuses if s == status)

    def rate(self, status: int | None = None) -> float:
        """Answered requests (or only those with `status`) per second of the run."""
        done = self.answered if status is None else self.count(status)
        return done / self.wall_seconds if self.wall_seconds > 0 else 0.0

    @property
    def cpu_share(self) -> float:
        """The generator's CPU time over the wall time (1.0 is one core, fully busy)."""
        return self.cpu_seconds / self.wall_seconds if self.wall_seconds > 0 else 0.0

    def latency_percentile(self, q: float, status: int | None = None) -> float:
        """The q-quantile (0..1, nearest rank) of the latencies of answered requests (or only
        those with `status`), in seconds; NaN when there are none."""
        return percentile(
            (
                latency
                for s, latency in zip(self.statuses, self.latencies_s, strict=True)
                if s != NO_ANSWER and (status is None or s == status)
            ),
            q,
        )


class ProtocolError(Exception):
    """The server's answer was not an HTTP/1.1 response this reader understands."""


@dataclass(frozen=True)
class ResponseHead:
    status: int
    content_length: int
    closes: bool  # `connection: close`: no further request may go on this connection


def _parse_head(head: bytes) -> ResponseHead:
    status_line, _, fields = head.partition(b"\r\n")
    parts = status_line.split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
        raise ProtocolError(f"not an HTTP/1.1 status line: {status_line[:80]!r}")
    length, closes = 0, False
    for line in fields.split(b"\r\n"):
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"connection":
            closes = value.strip().lower() == b"close"
        elif name == b"transfer-encoding":
            raise ProtocolError("chunked responses are not supported")
    return ResponseHead(int(parts[1]), length, closes)


class ResponseReader:
    """Splits a byte stream into HTTP/1.1 responses framed by `content-length` (none: empty
    body), answering each one's head. Chunked bodies are not supported (the servers measured
    here never send them): `ProtocolError`."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._head: ResponseHead | None = None

    def feed(self, data: bytes) -> list[ResponseHead]:
        self._buffer += data
        heads: list[ResponseHead] = []
        while True:
            if self._head is None:
                end = self._buffer.find(_HEAD_END)
                if end < 0:
                    return heads
                self._head = _parse_head(bytes(self._buffer[:end]))
                del self._buffer[: end + len(_HEAD_END)]
            if len(self._buffer) < self._head.content_length:
                return heads
            del self._buffer[: self._head.content_length]
            heads.append(self._head)
            self._head = None


class _Connection(asyncio.Protocol):
    """One keep-alive connection carrying one request at a time."""

    def __init__(self, run: _Run) -> None:
        self._run = run
        self._reader = ResponseReader()
        self.transport: asyncio.Transport | None = None
        self.in_flight: int | None = None  # the index of the request awaiting its answer
        self.usable = True  # false once closed, or told `connection: close`

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def send(self, index: int) -> None:
        assert self.transport is not None and self.in_flight is None and self.usable
        self.in_flight = index
        self.transport.write(self._run.requests[index])

    def abort(self) -> None:
        self.usable = False
        if self.transport is not None:
            self.transport.abort()

    def data_received(self, data: bytes) -> None:
        try:
            heads = self._reader.feed(data)
        except (ProtocolError, ValueError):
            self.abort()
            return
        for head in heads:
            index, self.in_flight = self.in_flight, None
            if head.closes:
                self.usable = False
            if index is not None:
                self._run.answered(self, index, head.status)

    def connection_lost(self, exc: Exception | None) -> None:
        self.usable = False
        index, self.in_flight = self.in_flight, None
        if index is not None:
            self._run.answered(self, index, NO_ANSWER)
        self._run.lost(self)


class _Run:
    """The state one run shares between its connections: which requests are due or waiting,
    what each got, and when the run is over."""

    def __init__(
        self, address: Address, requests: Sequence[bytes], connections: int, closed_loop: bool
    ) -> None:
        self.address = address
        self.requests = requests
        self.statuses = [NO_ANSWER] * len(requests)
        self.latencies = [0.0] * len(requests)
        self.started_at = [0.0] * len(requests)  # the due time (open-loop) or the send time
        self.closed_loop = closed_loop
        self.connections = connections
        self.open: set[_Connection] = set()
        self.connecting = 0
        self.idle: list[_Connection] = []
        self.waiting: deque[int] = deque()  # open-loop: due, not sent (no connection was free)
        self.next_index = 0  # closed-loop: the next request to send
        self.pending = len(requests)
        self.max_send_lag = 0.0
        self.loop = asyncio.get_running_loop()
        self.progress = asyncio.Event()  # set by every answer
        self.done = self.loop.create_future()
        if not requests:
            self.done.set_result(None)

    async def connect(self) -> None:
        """Open the connections, idle until the run starts."""
        while len(self.open) < self.connections:
            self.idle.append(await self._open())

    async def _open(self) -> _Connection:
        _, connection = await self.loop.create_connection(
            lambda: _Connection(self), self.address.host, self.address.port
        )
        self.open.add(connection)
        return connection

    def start_closed_loop(self) -> None:
        idle, self.idle = self.idle, []
        for connection in idle:
            self._ready(connection)

    def due(self, index: int, at: float) -> None:
        """Open-loop: request `index` is due now (it was due at `at`)."""
        self.started_at[index] = at
        if self.idle:
            self.max_send_lag = max(self.max_send_lag, self.loop.time() - at)
            self.idle.pop().send(index)
        else:
            self.waiting.append(index)
            self._replace_lost()

    def answered(self, connection: _Connection, index: int, status: int) -> None:
        self.statuses[index] = status
        self.latencies[index] = self.loop.time() - self.started_at[index]
        self.pending -= 1
        self.progress.set()
        if self.pending == 0:
            if not self.done.done():
                self.done.set_result(None)
        elif connection.usable:
            self._ready(connection)
        else:
            connection.abort()

    def lost(self, connection: _Connection) -> None:
        self.open.discard(connection)
        with contextlib.suppress(ValueError):
            self.idle.remove(connection)
        self._replace_lost()

    def _ready(self, connection: _Connection) -> None:
        if self.waiting:
            connection.send(self.waiting.popleft())
        elif self.closed_loop and self.next_index < len(self.requests):
            index, self.next_index = self.next_index, self.next_index + 1
            self.started_at[index] = self.loop.time()
            connection.send(index)
        else:
            self.idle.append(connection)

    def _has_unsent(self) -> bool:
        return bool(self.waiting) or (self.closed_loop and self.next_index < len(self.requests))

    def _replace_lost(self) -> None:
        """Replace connections the server closed, while there is work for them."""
        missing = self.connections - len(self.open) - self.connecting
        if self._has_unsent() and missing > 0 and not self.done.done():
            for _ in range(missing):
                self.connecting += 1
                self.loop.create_task(self._reopen())

    async def _reopen(self) -> None:
        try:
            connection = await self._open()
        except OSError:
            connection = None
        finally:
            self.connecting -= 1
        if connection is not None:
            self._ready(connection)
        elif not self.open and not self.connecting:
            self.give_up()  # the server is gone

    def give_up(self) -> None:
        """End the run now: whatever is unanswered keeps NO_ANSWER, its latency the time until
        now (from its due time; from now for a closed loop's unsent requests)."""
        now = self.loop.time()
        unsent = list(self.waiting)
        if self.closed_loop:
            unsent += range(self.next_index, len(self.requests))
            for index in range(self.next_index, len(self.requests)):
                self.started_at[index] = now
        self.waiting.clear()
        self.next_index = len(self.requests)
        in_flight = [c.in_flight for c in self.open if c.in_flight is not None]
        for connection in list(self.open):
            connection.in_flight = None
            connection.abort()
        for index in [*unsent, *in_flight]:
            self.statuses[index] = NO_ANSWER
            self.latencies[index] = now - self.started_at[index]
            self.pending -= 1
        if not self.done.done():
            self.done.set_result(None)

    async def finish(self, timeout_s: float) -> None:
        """Wait for every answer, giving up once none has come for `timeout_s`."""
        while not self.done.done():
            self.progress.clear()
            waiter = asyncio.ensure_future(self.progress.wait())
            finished, _ = await asyncio.wait(
                [waiter, self.done], timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED
            )
            waiter.cancel()
            if not finished:
                self.give_up()
        for connection in list(self.open):
            connection.abort()
        await asyncio.sleep(0)  # let the aborted transports close

    def result(self, wall: float, cpu: float, offered_rate: float | None) -> LoadResult:
        return LoadResult(
            statuses=tuple(self.statuses),
            latencies_s=tuple(self.latencies),
            wall_seconds=wall,
            cpu_seconds=cpu,
            max_send_lag_s=None if self.closed_loop else self.max_send_lag,
            offered_rate=offered_rate,
        )


async def at_fixed_rate(
    address: Address,
    requests: Sequence[bytes],
    rate: float,
    connections: int,
    timeout_s: float = 30.0,
) -> LoadResult:
    """Open-loop: request i is due `i / rate` seconds after the start and sent on a free
    connection (when none is free, as soon as one is), its latency counted from when it was
    due. `connections` bounds how many are in flight: give enough that the server, not the
    pool, is the queue (the rate times the latency you expect, and some). Unanswered requests
    are given up once no answer has come for `timeout_s`."""
    if rate <= 0:
        raise ValueError("rate must be positive")
    run = _Run(address, requests, connections, closed_loop=False)
    await run.connect()
    cpu_before, wall_before = time.process_time(), time.perf_counter()
    start = run.loop.time()
    interval = 1.0 / rate
    index = 0
    while index < len(requests) and not run.done.done():
        now = run.loop.time()
        # Everything already due goes now: the sleep's granularity never lowers the rate.
        while index < len(requests) and start + index * interval <= now:
            run.due(index, start + index * interval)
            index += 1
        if index < len(requests):
            await asyncio.sleep(start + index * interval - run.loop.time())
    await run.finish(timeout_s)
    wall = time.perf_counter() - wall_before
    return run.result(wall, time.process_time() - cpu_before, rate)


async def at_saturation(
    address: Address, requests: Sequence[bytes], connections: int, timeout_s: float = 30.0
) -> LoadResult:
    """Closed-loop: `connections` connections, each sending its next request as soon as its
    last is answered, until all are answered; latency counted from each send. Unanswered
    requests are given up once no answer has come for `timeout_s`."""
    run = _Run(address, requests, min(connections, len(requests)), closed_loop=True)
    await run.connect()
    cpu_before, wall_before = time.process_time(), time.perf_counter()
    run.start_closed_loop()
    await run.finish(timeout_s)
    wall = time.perf_counter() - wall_before
    return run.result(wall, time.process_time() - cpu_before, None)
