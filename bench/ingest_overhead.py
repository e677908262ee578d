"""Ingest overhead: the full ingest service against a minimal verify-and-produce endpoint, side by
side in alternating rounds of the same load (at saturation and at fixed open-loop rates), driven
by bench/load_generator.py. Prints one JSON line with the figures, the ratios and the targets
(throughput ratio >= 0.75, server CPU per webhook ratio <= 1.5)."""

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
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import httpx
import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from bench.load_generator import (
    Address,
    LoadResult,
    Webhook,
    at_fixed_rate,
    at_saturation,
    signed_webhooks,
)
from bench.proc_stats import parent_of, tree_cpu_seconds
from services.devstack.broker import EmbeddedBroker
from services.devstack.demo import create_demo_connection, demo_account, encode_body
from services.devstack.demo_trades import demo_stream
from services.devstack.ports import dies_with_parent, free_port, stop_process
from services.devstack.postgres import EmbeddedPostgres
from services.shared.crypto import new_master_key_base64
from services.shared.kafka import TopicSpec, create_producer, ensure_topics
from services.shared.migrations import apply_migrations
from services.shared.signatures import decode_secret

TARGET_THROUGHPUT_RATIO = 0.75
TARGET_CPU_RATIO = 1.5
ACCEPTED = 202
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
    """One connection as its sender holds it: its webhook URL's path, and the key it signs
    with."""

    path: str
    key: bytes


@dataclass
class Server:
    name: str
    port: int
    topic: str
    process: subprocess.Popen[bytes] | None = None
    accepted: int = 0

    @property
    def address(self) -> Address:
        return Address("127.0.0.1", self.port)

    def cpu_seconds(self) -> float:
        assert self.process is not None
        return tree_cpu_seconds(self.process.pid)


@dataclass(frozen=True)
class Load:
    """How one run drives a server: `rate` webhooks/s open-loop for `requests`, or with
    `rate` None back-to-back over `connections` (saturation)."""

    name: str
    requests: int
    connections: int
    rate: float | None = None

    async def drive(self, address: Address, requests: list[bytes]) -> LoadResult:
        if self.rate is None:
            return await at_saturation(address, requests, self.connections)
        return await at_fixed_rate(address, requests, self.rate, self.connections)


@dataclass(frozen=True)
class RunFigures:
    """One run of one load against one server."""

    seconds: float
    accepted: int
    refused: dict[str, int]
    webhooks_per_s: float
    p50_ms: float
    p99_ms: float
    # Server CPU per accepted webhook: steadier than wall-clock figures on a shared machine.
    server_cpu_ms_per_webhook: float
    # Postgres (every backend) per accepted webhook: what the minimal endpoint never spends.
    database_cpu_ms_per_webhook: float
    # Near 1.0 the load generator (one process) was the limit, not the server.
    generator_cpu_share: float
    # Open-loop only: how late the generator itself wrote a request while a connection was free.
    generator_max_send_lag_ms: float | None

    @classmethod
    def of(cls, result: LoadResult, server_cpu: float, database_cpu: float) -> RunFigures:
        accepted = result.count(ACCEPTED)
        per_webhook = 1000 / max(accepted, 1)
        lag = result.max_send_lag_s
        return cls(
            seconds=round(result.wall_seconds, 3),
            accepted=accepted,
            refused={str(s): n for s, n in result.status_counts.items() if s != ACCEPTED},
            webhooks_per_s=round(result.rate(ACCEPTED), 1),
            p50_ms=round(1000 * result.latency_percentile(0.50, ACCEPTED), 2),
            p99_ms=round(1000 * result.latency_percentile(0.99, ACCEPTED), 2),
            server_cpu_ms_per_webhook=round(server_cpu * per_webhook, 3),
            database_cpu_ms_per_webhook=round(database_cpu * per_webhook, 3),
            generator_cpu_share=round(result.cpu_share, 3),
            generator_max_send_lag_ms=None if lag is None else round(1000 * lag, 2),
        )


_MEDIANS = (
    "webhooks_per_s",
    "p50_ms",
    "p99_ms",
    "server_cpu_ms_per_webhook",
    "database_cpu_ms_per_webhook",
    "generator_cpu_share",
)


def medians(runs: list[RunFigures]) -> dict[str, object]:
    """The median of each figure over the rounds, with every round's figures."""
    summary: dict[str, object] = {
        name: round(statistics.median(getattr(run, name) for run in runs), 3) for name in _MEDIANS
    }
    summary["refused"] = dict(sum((Counter(run.refused) for run in runs), Counter()))
    summary["rounds"] = [dataclasses.asdict(run) for run in runs]
    return summary


def ratios(full: dict[str, object], minimal: dict[str, object]) -> dict[str, float | None]:
    """full / minimal for each median figure the minimal endpoint spends anything on."""
    answer: dict[str, float | None] = {}
    for name in ("webhooks_per_s", "p50_ms", "p99_ms", "server_cpu_ms_per_webhook"):
        mine, theirs = full[name], minimal[name]
        assert isinstance(mine, float | int) and isinstance(theirs, float | int)
        answer[name] = round(mine / theirs, 4) if theirs else None
    return answer


@contextlib.contextmanager
def _service(server: Server, args: list[str], env: dict[str, str], log: Path) -> Iterator[None]:
    with log.open("ab") as sink:
        server.process = subprocess.Popen(
            [sys.executable, *args],
            cwd=REPO,
            env={**os.environ, **env},
            stdout=sink,
            stderr=sink,
            start_new_session=True,
            preexec_fn=dies_with_parent(signal.SIGTERM),
        )
    try:
        _wait_until_ready(server, log)
        yield
    finally:
        stop_process(server.process, signal.SIGTERM, timeout=10)


def _wait_until_ready(server: Server, log: Path, timeout: float = 30.0) -> None:
    assert server.process is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"{server.name} exited early; see {log}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"http://{server.address.authority}/readyz", timeout=1).status_code == 200:
                return
        time.sleep(0.1)
    raise TimeoutError(f"{server.name} not ready within {timeout}s; see {log}")


class Bench:
    """The servers, the senders and their bodies, and the database's process, for one run."""

    def __init__(
        self, servers: list[Server], senders: list[Sender], bodies: list[bytes], postgres_pid: int
    ) -> None:
        self.servers = servers
        self.senders = senders
        self.bodies = bodies
        self.postgres_pid = postgres_pid
        self.figures: dict[tuple[str, str], list[RunFigures]] = {}

    def requests(self, server: Server, count: int) -> list[bytes]:
        """`count` webhooks signed now (so within the tolerance when sent), each its own id."""
        webhooks = (
            Webhook(
                f"/v1/webhooks/mt5/{self.senders[i % len(self.senders)].path}",
                self.senders[i % len(self.senders)].key,
                self.bodies[i % len(self.bodies)],
            )
            for i in range(count)
        )
        return signed_webhooks(server.address, webhooks)

    async def run(self, server: Server, load: Load) -> RunFigures:
        requests = self.requests(server, load.requests)
        cpu_before = server.cpu_seconds()
        database_before = tree_cpu_seconds(self.postgres_pid)
        result = await load.drive(server.address, requests)
        server_cpu = server.cpu_seconds() - cpu_before
        database_cpu = tree_cpu_seconds(self.postgres_pid) - database_before
        server.accepted += result.count(ACCEPTED)
        return RunFigures.of(result, server_cpu, database_cpu)

    async def measure(self, loads: list[Load], warmup: Load, rounds: int) -> None:
        for server in self.servers:
            await self.run(server, warmup)
        for round_number in range(rounds):
            # Alternate who goes first, so neither always runs on a warmer (or busier) machine.
            order = self.servers if round_number % 2 == 0 else self.servers[::-1]
            for load in loads:
                for server in order:
                    figures = await self.run(server, load)
                    self.figures.setdefault((load.name, server.name), []).append(figures)


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


async def _postgres_pid(dsn: str) -> int:
    """The postmaster's pid: the parent of any backend (read while the backend lives)."""
    conn = await asyncpg.connect(dsn)
    try:
        parent = parent_of(await conn.fetchval("SELECT pg_backend_pid()"))
    finally:
        await conn.close()
    assert parent is not None
    return parent


def _loads(args: argparse.Namespace) -> list[Load]:
    loads = [Load("saturation", args.requests, args.connections)]
    for rate in args.rates:
        count = max(1, round(rate * args.seconds))
        loads.append(Load(f"rate_{rate:g}", count, args.rate_connections, rate=rate))
    return loads


def run(args: argparse.Namespace) -> dict[str, object]:
    """Both run as uvicorn processes on the same embedded Postgres and broker, in the same run:
    (a) the real ingest, every check on and tracing to a file as in the dev stack, rate limits
    raised out of the way (still counted); (b) a bare Starlette app that checks one HMAC-SHA256
    and produces the body with the pipeline's producer settings (`acks=all`). The load
    generator drives each with the same freshly signed MT5 webhooks, in alternating rounds,
    at saturation and at each fixed rate; medians over the rounds are reported, with each
    server's CPU per webhook, Postgres's, the generator's own CPU share, and whether every 202
    reached the topic. The full/minimal ratios are what to compare across machines and commits.
    """
    with contextlib.ExitStack() as stack:
        state = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="poscal-bench-")))
        postgres = stack.enter_context(EmbeddedPostgres(log_path=state / "postgres.log"))
        broker = stack.enter_context(EmbeddedBroker(log_path=state / "broker.log"))
        bootstrap = broker.bootstrap_servers
        master_key = new_master_key_base64()
        full = Server("full", free_port(), f"bench.full.{uuid.uuid4().hex[:8]}")
        minimal = Server("minimal", free_port(), f"bench.minimal.{uuid.uuid4().hex[:8]}")
        asyncio.run(apply_migrations(postgres.dsn))
        asyncio.run(ensure_topics(bootstrap, [TopicSpec(full.topic), TopicSpec(minimal.topic)]))
        ingest_url = f"http://{full.address.authority}"
        senders, bodies = asyncio.run(_prepare(postgres.dsn, master_key, ingest_url, args.senders))
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
            **_sampling(args.trace_sample_ratio),
        }
        minimal_env = {
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "BENCH_PORT": str(minimal.port),
            "BENCH_TOPIC": minimal.topic,
            "BENCH_MINIMAL_KEYS": orjson.dumps(
                {s.path: base64.b64encode(s.key).decode() for s in senders}
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
        if args.hold_ingest_pid is not None:
            assert full.process is not None
            args.hold_ingest_pid.write_text(str(full.process.pid))
        bench = Bench([minimal, full], senders, bodies, asyncio.run(_postgres_pid(postgres.dsn)))
        loads = _loads(args)
        warmup = Load("warmup", args.warmup, args.connections)
        asyncio.run(bench.measure(loads, warmup, args.rounds))
        published = {
            server.name: {
                "accepted": server.accepted,
                "on_topic": asyncio.run(_published(bootstrap, server.topic, server.accepted)),
            }
            for server in (full, minimal)
        }
    modes: dict[str, object] = {}
    for load in loads:
        full_figures = medians(bench.figures[(load.name, "full")])
        minimal_figures = medians(bench.figures[(load.name, "minimal")])
        modes[load.name] = {
            "offered_rate": load.rate,
            "requests": load.requests,
            "connections": load.connections,
            "full": full_figures,
            "minimal": minimal_figures,
            "ratio_full_to_minimal": ratios(full_figures, minimal_figures),
        }
    saturation = modes["saturation"]
    assert isinstance(saturation, dict)
    throughput_ratio = saturation["ratio_full_to_minimal"]["webhooks_per_s"]
    cpu_ratio = saturation["ratio_full_to_minimal"]["server_cpu_ms_per_webhook"]
    return {
        "benchmark": "ingest_overhead",
        "rounds": args.rounds,
        "warmup_requests": args.warmup,
        "senders": args.senders,
        "trace_sample_ratio": args.trace_sample_ratio,
        "modes": modes,
        "published": published,
        "every_202_published": all(p["on_topic"] >= p["accepted"] for p in published.values()),
        "throughput_ratio": throughput_ratio,
        "server_cpu_ratio": cpu_ratio,
        "target_throughput_ratio": TARGET_THROUGHPUT_RATIO,
        "target_server_cpu_ratio": TARGET_CPU_RATIO,
        "throughput_target_met": throughput_ratio is not None
        and throughput_ratio >= TARGET_THROUGHPUT_RATIO,
        "cpu_target_met": cpu_ratio is not None and cpu_ratio <= TARGET_CPU_RATIO,
    }


def _sampling(ratio: float) -> dict[str, str]:
    """The SDK's own sampler settings for a share of traces recorded (1: every one)."""
    if ratio >= 1:
        return {"OTEL_TRACES_SAMPLER": "parentbased_always_on"}
    return {
        "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
        "OTEL_TRACES_SAMPLER_ARG": str(ratio),
    }


def _rates(text: str) -> list[float]:
    return [float(part) for part in text.split(",") if part.strip()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--requests", type=int, default=3000, help="per server per round, saturated"
    )
    parser.add_argument("--connections", type=int, default=32, help="saturation: connections")
    parser.add_argument("--rates", type=_rates, default=[100.0, 400.0], help="open-loop rates, /s")
    parser.add_argument("--seconds", type=float, default=4.0, help="each open-loop run's length")
    parser.add_argument(
        "--rate-connections", type=int, default=64, help="open loop: most requests in flight"
    )
    parser.add_argument("--warmup", type=int, default=500, help="per server, before round one")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--senders", type=int, default=4, help="connections sending webhooks")
    parser.add_argument(
        "--trace-sample-ratio",
        type=float,
        default=1.0,
        help="share of the full ingest's traces recorded to its trace file (the dev stack's: 0.1)",
    )
    # For profiling: where to write the ingest process's pid once it is ready.
    parser.add_argument("--hold-ingest-pid", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--serve-minimal", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_minimal:
        return serve_minimal()
    result = run(args)
    sys.stdout.write(orjson.dumps(result).decode() + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
