"""Ingest overhead: the full ingest service against a minimal verify-and-produce endpoint, in
alternating rounds of the same load. Prints one JSON object (target throughput ratio >= 0.75)."""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import dataclasses
import hashlib
import hmac
import itertools
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from services.devstack.broker import EmbeddedBroker
from services.devstack.demo import create_demo_connection, demo_account, encode_body
from services.devstack.demo_trades import demo_stream
from services.devstack.ports import dies_with_parent, free_port, stop_process
from services.devstack.postgres import EmbeddedPostgres
from services.shared.crypto import new_master_key_base64
from services.shared.kafka import TopicSpec, create_producer, ensure_topics
from services.shared.migrations import apply_migrations
from services.shared.signatures import decode_secret, sign

TARGET_RATIO = 0.75
REPO = Path(__file__).resolve().parents[1]
WEBHOOK_ROUTE = "/v1/webhooks/{broker}/{connection_id}"
# High enough that the rate limiter never refuses the benchmark's own load.
UNLIMITED = "100000000/minute"


# -- the minimal endpoint (run in its own process by `--serve-minimal`) -------------------------


def minimal_app(keys: dict[str, bytes], bootstrap_servers: str, topic: str) -> Starlette:
    """Checks one `v1` HMAC-SHA256 and produces the raw body, keyed by connection: no more."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        producer = create_producer(bootstrap_servers, client_id="bench-minimal")
        await producer.start()
        app.state.producer = producer
        try:
            yield
        finally:
            await producer.stop()

    async def receive(request: Request) -> Response:
        connection_id = request.path_params["connection_id"]
        key = keys.get(connection_id)
        body = await request.body()
        webhook_id = request.headers.get("webhook-id", "")
        timestamp = request.headers.get("webhook-timestamp", "")
        given = request.headers.get("webhook-signature", "").partition(" ")[0].removeprefix("v1,")
        content = f"{webhook_id}.{timestamp}.".encode() + body
        if key is None or not hmac.compare_digest(
            base64.b64encode(hmac.new(key, content, hashlib.sha256).digest()), given.encode()
        ):
            return JSONResponse({"error": "unauthorized", "detail": "not verified"}, 401)
        await request.app.state.producer.send_and_wait(topic, body, key=connection_id.encode())
        return JSONResponse({"status": "accepted", "event_id": str(uuid.uuid4())}, 202)

    async def ready(_: Request) -> Response:
        return JSONResponse({"status": "ready"})

    return Starlette(
        routes=[Route(WEBHOOK_ROUTE, receive, methods=["POST"]), Route("/readyz", ready)],
        lifespan=lifespan,
    )


def serve_minimal() -> int:
    import uvicorn

    keys = {
        connection_id: base64.b64decode(key)
        for connection_id, key in orjson.loads(os.environ["BENCH_MINIMAL_KEYS"]).items()
    }
    app = minimal_app(keys, os.environ["KAFKA_BOOTSTRAP_SERVERS"], os.environ["BENCH_TOPIC"])
    # The same server settings as services/ingest/main.py.
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=int(os.environ["BENCH_PORT"]),
        log_level="warning",
        access_log=False,
        server_header=False,
    )
    return 0


# -- the harness --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sender:
    """One connection as its sender holds it: its webhook URL's path id, and the key it signs
    with."""

    path_id: str
    key: bytes


@dataclass(frozen=True)
class RoundResult:
    seconds: float
    accepted: int
    refused: dict[str, int]
    webhooks_per_s: float
    p50_ms: float
    p99_ms: float
    # Server CPU per accepted webhook: steadier than wall-clock numbers on a shared machine.
    server_cpu_ms_per_webhook: float
    # Near 1.0, the load generator (one process) was the limit, not the server.
    load_generator_cpu_share: float


@dataclass
class Target:
    name: str
    port: int
    topic: str
    process: subprocess.Popen[bytes] | None = None
    warmup: RoundResult | None = None
    rounds: list[RoundResult] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def cpu_seconds(self) -> float:
        """User + system CPU the server process has used so far (all its threads)."""
        assert self.process is not None
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


@contextlib.contextmanager
def _service(target: Target, args: list[str], env: dict[str, str], log: Path) -> Iterator[None]:
    with log.open("ab") as sink:
        target.process = subprocess.Popen(
            [sys.executable, *args],
            cwd=REPO,
            env={**os.environ, **env},
            stdout=sink,
            stderr=sink,
            start_new_session=True,
            preexec_fn=dies_with_parent(signal.SIGTERM),
        )
    try:
        _wait_until_ready(target, log)
        yield
    finally:
        stop_process(target.process, signal.SIGTERM, timeout=10)


def _wait_until_ready(target: Target, log: Path, timeout: float = 30.0) -> None:
    assert target.process is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if target.process.poll() is not None:
            raise RuntimeError(f"{target.name} exited early; see {log}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{target.url}/readyz", timeout=1).status_code == 200:
                return
        time.sleep(0.1)
    raise TimeoutError(f"{target.name} not ready within {timeout}s; see {log}")


Post = Callable[[str, dict[str, str], bytes], Awaitable[int]]


class KeepAliveConnection:
    """One HTTP/1.1 keep-alive connection, one request at a time, answering the status.

    The default load generator: httpx spends more CPU per request than the servers measured
    here, so on two cores it, not the server, would set the pace (`--client httpx` shows it).
    """

    def __init__(self, port: int) -> None:
        self._port = port
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def __aenter__(self) -> KeepAliveConnection:
        self._reader, self._writer = await asyncio.open_connection("127.0.0.1", self._port)
        return self

    async def __aexit__(self, *_: object) -> None:
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(OSError):
                await self._writer.wait_closed()

    async def post(self, path: str, headers: dict[str, str], body: bytes) -> int:
        assert self._reader is not None and self._writer is not None
        head = [f"POST {path} HTTP/1.1", f"host: 127.0.0.1:{self._port}"]
        head += [f"{name}: {value}" for name, value in headers.items()]
        head.append(f"content-length: {len(body)}")
        self._writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + body)
        status = int((await self._reader.readline()).split()[1])
        length = 0
        while (line := await self._reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        await self._reader.readexactly(length)
        return status


async def _posters(
    stack: contextlib.AsyncExitStack, target: Target, client: str, concurrency: int
) -> list[Post]:
    if client == "httpx":
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        shared = await stack.enter_async_context(httpx.AsyncClient(timeout=30, limits=limits))

        async def post(path: str, headers: dict[str, str], body: bytes) -> int:
            response = await shared.post(f"{target.url}{path}", content=body, headers=headers)
            return response.status_code

        return [post] * concurrency
    return [
        (await stack.enter_async_context(KeepAliveConnection(target.port))).post
        for _ in range(concurrency)
    ]


async def _load(
    target: Target,
    senders: list[Sender],
    bodies: list[bytes],
    requests: int,
    args: argparse.Namespace,
) -> RoundResult:
    """`requests` signed webhooks at fixed concurrency; what was accepted, how fast."""
    work = iter(range(requests))
    latencies: list[float] = []
    statuses: Counter[int] = Counter()

    async def worker(post: Post) -> None:
        for i in work:
            sender = senders[i % len(senders)]
            body = bodies[i % len(bodies)]
            webhook_id = f"msg_{uuid.uuid4().hex}"
            timestamp = int(time.time())
            headers = {
                "content-type": "application/json",
                "webhook-id": webhook_id,
                "webhook-timestamp": str(timestamp),
                "webhook-signature": sign(sender.key, webhook_id, timestamp, body),
            }
            started = time.perf_counter()
            status = await post(f"/v1/webhooks/mt5/{sender.path_id}", headers, body)
            elapsed = time.perf_counter() - started
            statuses[status] += 1
            if status == 202:
                latencies.append(elapsed)

    async with contextlib.AsyncExitStack() as stack:
        posters = await _posters(stack, target, args.client, args.concurrency)
        cpu_before, own_cpu_before = target.cpu_seconds(), time.process_time()
        started = time.perf_counter()
        await asyncio.gather(*(worker(post) for post in posters))
        seconds = time.perf_counter() - started
        cpu, own_cpu = target.cpu_seconds() - cpu_before, time.process_time() - own_cpu_before
    accepted = len(latencies)
    latencies_ms = [v * 1000 for v in latencies] or [float("nan")]
    return RoundResult(
        seconds=round(seconds, 3),
        accepted=accepted,
        refused={str(status): n for status, n in sorted(statuses.items()) if status != 202},
        webhooks_per_s=round(accepted / seconds, 1),
        p50_ms=round(_percentile(latencies_ms, 0.50), 2),
        p99_ms=round(_percentile(latencies_ms, 0.99), 2),
        server_cpu_ms_per_webhook=round(1000 * cpu / max(accepted, 1), 3),
        load_generator_cpu_share=round(own_cpu / seconds, 2),
    )


async def _published(bootstrap_servers: str, topic: str, expect: int) -> int:
    """Records on the topic, counted by reading them: the embedded broker's end offsets are
    sometimes one short."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap_servers, enable_auto_commit=False)
    await consumer.start()
    try:
        for _ in range(50):
            if consumer.partitions_for_topic(topic):
                break
            await consumer._client.force_metadata_update()
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        count = 0
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            fetched = await consumer.getmany(timeout_ms=500, max_records=5000)
            count += sum(len(batch) for batch in fetched.values())
            if count >= expect and not fetched:
                break
        return count
    finally:
        await consumer.stop()


@dataclass(frozen=True)
class Summary:
    """Medians over the rounds, and what reached the topic against what was answered 202."""

    webhooks_per_s: float
    p50_ms: float
    p99_ms: float
    server_cpu_ms_per_webhook: float
    accepted: int
    published: int
    rounds: list[RoundResult]

    @staticmethod
    def accepted_by(target: Target) -> int:
        warmup = target.warmup.accepted if target.warmup else 0
        return warmup + sum(r.accepted for r in target.rounds)

    @classmethod
    def of(cls, target: Target, published: int) -> Summary:
        rounds = target.rounds
        return cls(
            webhooks_per_s=round(statistics.median(r.webhooks_per_s for r in rounds), 1),
            p50_ms=round(statistics.median(r.p50_ms for r in rounds), 2),
            p99_ms=round(statistics.median(r.p99_ms for r in rounds), 2),
            server_cpu_ms_per_webhook=round(
                statistics.median(r.server_cpu_ms_per_webhook for r in rounds), 3
            ),
            accepted=cls.accepted_by(target),
            published=published,
            rounds=rounds,
        )


async def _prepare(
    database_url: str, master_key: str, ingest_url: str, connections: int
) -> tuple[list[Sender], list[bytes]]:
    senders: list[Sender] = []
    streams: list[list[bytes]] = []
    for _ in range(connections):
        account = demo_account()
        _, created = await create_demo_connection(database_url, master_key, ingest_url, account)
        path_id = created.webhook_url.rsplit("/", 1)[1]
        senders.append(Sender(path_id, decode_secret(created.webhook_secret)))
        streams.append([encode_body(body) for body in demo_stream(account, positions=50)])
    bodies = [body for group in itertools.zip_longest(*streams) for body in group if body]
    return senders, bodies


async def _measure(
    targets: list[Target], senders: list[Sender], bodies: list[bytes], args: argparse.Namespace
) -> None:
    for target in targets:
        target.warmup = await _load(target, senders, bodies, args.warmup, args)
    for round_number in range(args.rounds):
        # Alternate who goes first, so neither always runs on a warmer (or busier) machine.
        order = targets if round_number % 2 == 0 else targets[::-1]
        for target in order:
            target.rounds.append(await _load(target, senders, bodies, args.requests, args))


def run(args: argparse.Namespace) -> dict[str, object]:
    """Both run as uvicorn processes on the same embedded Postgres and broker, in the same run:
    (a) the real ingest, every check on and tracing to a file as in the dev stack, rate limits
    raised out of the way; (b) a bare Starlette app that checks one HMAC-SHA256 and produces the
    body with the pipeline's producer settings (`acks=all`). One load generator (fixed
    concurrency, freshly signed MT5 webhooks, warmed up first) drives each in alternating
    rounds; medians over the rounds are reported, with each server's CPU per webhook and whether
    every 202 reached the topic. The full/minimal throughput ratio is what to compare across
    machines and commits."""
    with contextlib.ExitStack() as stack:
        state = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="poscal-bench-")))
        postgres = stack.enter_context(EmbeddedPostgres(log_path=state / "postgres.log"))
        broker = stack.enter_context(EmbeddedBroker(log_path=state / "broker.log"))
        bootstrap = broker.bootstrap_servers
        master_key = new_master_key_base64()
        full = Target("full", free_port(), f"bench.full.{uuid.uuid4().hex[:8]}")
        minimal = Target("minimal", free_port(), f"bench.minimal.{uuid.uuid4().hex[:8]}")
        asyncio.run(apply_migrations(postgres.dsn))
        asyncio.run(ensure_topics(bootstrap, [TopicSpec(full.topic), TopicSpec(minimal.topic)]))
        senders, bodies = asyncio.run(
            _prepare(postgres.dsn, master_key, full.url, args.connections)
        )
        full_env = {
            "DATABASE_URL": postgres.dsn,
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "POSCAL_MASTER_KEY": master_key,
            "POSCAL_INGEST_PORT": str(full.port),
            "POSCAL_TOPIC_RAW": full.topic,
            "POSCAL_TRACE_FILE": str(state / "traces" / "ingest.jsonl"),
            "POSCAL_LOG_FORMAT": "json",
            "POSCAL_RATE_LIMIT_PER_CONNECTION": UNLIMITED,
            "POSCAL_RATE_LIMIT_PER_USER": UNLIMITED,
        }
        minimal_env = {
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "BENCH_PORT": str(minimal.port),
            "BENCH_TOPIC": minimal.topic,
            "BENCH_MINIMAL_KEYS": orjson.dumps(
                {s.path_id: base64.b64encode(s.key).decode() for s in senders}
            ).decode(),
        }
        stack.enter_context(
            _service(full, ["-m", "services.ingest"], full_env, state / "ingest.log")
        )
        stack.enter_context(
            _service(
                minimal,
                ["-m", "bench.ingest_overhead", "--serve-minimal"],
                minimal_env,
                state / "minimal.log",
            )
        )
        asyncio.run(_measure([minimal, full], senders, bodies, args))
        full_result, minimal_result = (
            Summary.of(t, asyncio.run(_published(bootstrap, t.topic, Summary.accepted_by(t))))
            for t in (full, minimal)
        )
    throughput_ratio = full_result.webhooks_per_s / minimal_result.webhooks_per_s
    return {
        "benchmark": "ingest_overhead",
        "requests_per_round": args.requests,
        "warmup_requests": args.warmup,
        "rounds": args.rounds,
        "concurrency": args.concurrency,
        "connections": args.connections,
        "client": args.client,
        "full": dataclasses.asdict(full_result),
        "minimal": dataclasses.asdict(minimal_result),
        "ratio_full_to_minimal": {
            "throughput": round(throughput_ratio, 4),
            "p99_latency": round(full_result.p99_ms / minimal_result.p99_ms, 4),
            "server_cpu_per_webhook": round(
                full_result.server_cpu_ms_per_webhook / minimal_result.server_cpu_ms_per_webhook, 4
            ),
        },
        "target_throughput_ratio": TARGET_RATIO,
        "target_met": throughput_ratio >= TARGET_RATIO,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=2000, help="per target per round")
    parser.add_argument("--warmup", type=int, default=300, help="per target, before round one")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument(
        "--client",
        choices=("keepalive", "httpx"),
        default="keepalive",
        help="load generator: a bare keep-alive HTTP/1.1 client, or httpx (costlier per request)",
    )
    parser.add_argument("--serve-minimal", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_minimal:
        return serve_minimal()
    result = run(args)
    sys.stdout.write(orjson.dumps(result).decode() + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
