"""Pipeline drain: a backlog of queued MT5 webhooks through the real normalizer and writer,
against the Kafka->Postgres one-process floor measured in the same run. Prints one JSON object
(target: deals written per second at least half the floor's rows per second)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import random
import secrets
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import orjson
from aiokafka import AIOKafkaProducer
from opentelemetry.sdk.trace.sampling import Decision, TraceIdRatioBased

from services.devstack.broker import EmbeddedBroker
from services.devstack.demo import create_demo_connection, demo_account, encode_body
from services.devstack.demo_trades import DemoAccount, demo_stream, webhook_body
from services.devstack.ports import dies_with_parent, stop_process
from services.devstack.postgres import EmbeddedPostgres
from services.devstack.stack import (
    DEV_TRACE_SAMPLE_RATIO,
    EMBEDDED_BROKER_CONSUMER_ENV,
    pipeline_topics,
)
from services.shared.envelope import ConnectionRef, RawEvent
from services.shared.kafka import (
    TopicSpec,
    create_consumer,
    create_producer,
    ensure_topics,
    next_offsets,
)
from services.shared.migrations import apply_migrations
from services.shared.settings import Topics

TARGET_RATIO = 0.5
REPO = Path(__file__).resolve().parents[1]
SERVICES = ("normalizer", "writer")


# -- the backlog ------------------------------------------------------------------------------


def webhooks_of(
    connection: ConnectionRef, count: int, rng: random.Random
) -> Iterator[tuple[bytes, int]]:
    """`count` webhook bodies of 1-5 deals each for this connection's demo account, oldest
    first, and how many deals each carries: the demo stream's deals regrouped."""
    account = DemoAccount(login=int(connection.account_number), server=connection.server or "")
    stream = demo_stream(account, positions=count * 3, seed=rng.randrange(1 << 30))
    deals = ((body, deal) for body in stream for deal in body["deals"])
    for _ in range(count):
        group = list(itertools.islice(deals, rng.randint(1, 5)))
        if not group:
            return
        last_body = group[-1][0]["account"]
        body = webhook_body(account, last_body["balance"], last_body["equity"], [])
        body["deals"] = [deal for _, deal in group]
        yield encode_body(body), len(group)


def traceparent(sampler: TraceIdRatioBased) -> bytes:
    """A W3C trace context as ingest's send span would put in the headers: sampled (`-01`) as
    ingest's ratio sampler would decide for its trace id, which the services then follow."""
    trace_id = int.from_bytes(secrets.token_bytes(16), "big") or 1
    sampled = sampler.should_sample(None, trace_id, "POST").decision == Decision.RECORD_AND_SAMPLE
    return f"00-{trace_id:032x}-{secrets.token_hex(8)}-{'01' if sampled else '00'}".encode()


async def produce(
    producer: AIOKafkaProducer, topic: str, messages: list[tuple[bytes, bytes, list[Any]]]
) -> None:
    """Every message sent, then every acknowledgement awaited (in slices, to bound memory)."""
    for start in range(0, len(messages), 5000):
        deliveries = [
            await producer.send(topic, value, key=key, headers=headers)
            for key, value, headers in messages[start : start + 5000]
        ]
        await asyncio.gather(*deliveries)


async def queue_backlog(
    dsn: str,
    bootstrap: str,
    topic: str,
    events: int,
    connections: int,
    master_key: str,
    sample_ratio: float,
) -> tuple[list[uuid.UUID], int, list[bytes]]:
    """Demo connections, and `events` raw events of theirs on the raw topic, interleaved across
    connections as real traffic is; the connections, the deals queued, and the raw values."""
    rng = random.Random(12)
    refs: list[ConnectionRef] = []
    conn = await asyncpg.connect(dsn)
    try:
        for _ in range(connections):
            _, created = await create_demo_connection(
                dsn, master_key, "http://127.0.0.1:1", demo_account()
            )
            row = await conn.fetchrow(
                "SELECT * FROM mt5_connections WHERE id = $1", created.connection_id
            )
            assert row is not None
            refs.append(ConnectionRef.from_row(row))
    finally:
        await conn.close()
    per_connection = -(-events // connections)
    received_at = datetime.now(UTC)
    streams = []
    for ref in refs:
        streams.append(
            [(ref, body, deals) for body, deals in webhooks_of(ref, per_connection, rng)]
        )
    interleaved = [e for group in itertools.zip_longest(*streams) for e in group if e][:events]
    messages = []
    deals = 0
    sampler = TraceIdRatioBased(sample_ratio)
    for ref, body, count in interleaved:
        event = RawEvent.wrap(
            source="webhook",
            connection=ref,
            received_at=received_at,
            delivery_id=f"msg_{uuid.uuid4().hex}",
            body=body,
        )
        headers = [
            ("poscal-event-id", str(event.event_id).encode()),
            ("traceparent", traceparent(sampler)),
        ]
        messages.append(
            (str(ref.connection_id).encode(), event.model_dump_json().encode(), headers)
        )
        deals += count
    producer = create_producer(bootstrap, "bench-backlog")
    await producer.start()
    try:
        await produce(producer, topic, messages)
    finally:
        await producer.stop()
    return [r.connection_id for r in refs], deals, [value for _, value, _ in messages]


# -- the floor --------------------------------------------------------------------------------

_FLOOR_TABLE = """
CREATE TABLE {table} (
    event_id uuid PRIMARY KEY, connection_id uuid NOT NULL, delivery_id text NOT NULL,
    received_at timestamptz NOT NULL, body_bytes int NOT NULL
)
"""
_FLOOR_COLUMNS = ("event_id", "connection_id", "delivery_id", "received_at", "body_bytes")


async def floor(
    dsn: str, bootstrap: str, values: list[bytes], batch: int, broker_pid: int
) -> dict[str, Any]:
    """The Kafka->Postgres one-process floor: the same raw values preloaded on a topic of their
    own, then consumed, decoded, upserted through COPY into a temporary table and
    `INSERT ... SELECT ... ON CONFLICT`, one row per message, committed, offsets committed after
    the database. Timed from the consumer holding its partitions to the last commit; CPU per
    row of the process, its Postgres backend and the broker."""
    suffix = uuid.uuid4().hex[:8]
    topic, table = f"bench.floor.{suffix}", f"bench_floor_{suffix}"
    await ensure_topics(bootstrap, [TopicSpec(topic, 6)])
    producer = create_producer(bootstrap, "bench-floor")
    await producer.start()
    try:
        await produce(
            producer, topic, [(str(i % 64).encode(), v, []) for i, v in enumerate(values)]
        )
    finally:
        await producer.stop()
    conn = await asyncpg.connect(dsn)
    consumer = create_consumer(bootstrap, topic, f"bench-floor-{topic}", "bench-floor", 2000, 20)
    await consumer.start()
    try:
        await conn.execute(_FLOOR_TABLE.format(table=table))
        backend = await conn.fetchval("SELECT pg_backend_pid()")
        cpu_before = (time.process_time(), cpu_seconds(backend), cpu_seconds(broker_pid))
        started = time.perf_counter()
        rows = 0
        # Fetched to the end by count: the embedded broker's end offsets are not the partition's.
        while rows < len(values):
            fetched = await consumer.getmany(timeout_ms=1000, max_records=batch)
            records = [r for batch_ in fetched.values() for r in batch_]
            if not records:
                continue
            decoded = [orjson.loads(r.value) for r in records]
            async with conn.transaction():
                await conn.execute(
                    f"CREATE TEMP TABLE IF NOT EXISTS {table}_in"
                    f" (LIKE {table}) ON COMMIT DELETE ROWS"
                )
                await conn.copy_records_to_table(
                    f"{table}_in",
                    columns=_FLOOR_COLUMNS,
                    records=[
                        (
                            uuid.UUID(d["event_id"]),
                            uuid.UUID(d["connection"]["connection_id"]),
                            d["delivery_id"],
                            datetime.fromisoformat(d["received_at"]),
                            len(d["body_b64"]),
                        )
                        for d in decoded
                    ],
                )
                await conn.execute(
                    f"INSERT INTO {table} SELECT * FROM {table}_in"  # noqa: S608 - our own names
                    " ON CONFLICT (event_id) DO UPDATE SET received_at = EXCLUDED.received_at"
                )
            await consumer.commit(next_offsets(records))
            rows += len(records)
        seconds = time.perf_counter() - started
        cpu = (
            time.process_time() - cpu_before[0],
            cpu_seconds(backend) - cpu_before[1],
            cpu_seconds(broker_pid) - cpu_before[2],
        )
    finally:
        await consumer.stop()
        await conn.close()
    return {
        "rows": rows,
        "seconds": round(seconds, 3),
        "rows_per_s": round(rows / seconds, 1),
        "cpu_ms_per_row": {
            name: round(1000 * c / rows, 4)
            for name, c in zip(("process", "postgres_backend", "broker"), cpu, strict=True)
        },
    }


# -- the drain --------------------------------------------------------------------------------


def broker_pid(port: int) -> int:
    """The embedded broker's process, found by the address it listens on."""
    listener = f"tcp://127.0.0.1:{port}".encode()
    for proc in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            if proc.name.isdigit() and listener in (proc / "cmdline").read_bytes().split(b"\0"):
                return int(proc.name)
    raise LookupError(f"no broker process listening on {port}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU a process has used so far (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Service:
    name: str
    process: subprocess.Popen[bytes]
    ready_file: Path
    profiler: subprocess.Popen[bytes] | None = None


def start_service(name: str, env: dict[str, str], state: Path) -> Service:
    ready = state / "run" / f"{name}.ready"
    with (state / f"{name}.log").open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", f"services.{name}"],
            cwd=REPO,
            env={
                **os.environ,
                **env,
                "POSCAL_READY_FILE": str(ready),
                "POSCAL_TRACE_FILE": str(state / "traces" / f"{name}.jsonl"),
            },
            stdout=log,
            stderr=log,
            start_new_session=True,
            preexec_fn=dies_with_parent(signal.SIGTERM),
        )
    return Service(name, process, ready)


def start_profiler(service: Service, out: Path) -> None:
    """py-spy sampling the service from now until it is stopped (SIGINT writes the profile)."""
    py_spy = Path(sys.executable).with_name("py-spy")
    service.profiler = subprocess.Popen(
        [
            str(py_spy if py_spy.exists() else "py-spy"),
            "record",
            "--pid",
            str(service.process.pid),
            "--rate",
            "200",
            "--format",
            "speedscope",
            "--output",
            str(out / f"{service.name}.speedscope.json"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


async def backend_cpu_seconds(conn: asyncpg.Connection) -> float:
    """CPU used so far by every Postgres client backend but this one."""
    pids = await conn.fetch(
        "SELECT pid FROM pg_stat_activity WHERE backend_type = 'client backend'"
        " AND pid <> pg_backend_pid()"
    )
    total = 0.0
    for row in pids:
        with contextlib.suppress(OSError):
            total += cpu_seconds(row["pid"])
    return total


async def drain(
    dsn: str,
    services: list[Service],
    connection_ids: list[uuid.UUID],
    events: int,
    deals: int,
    idle_seconds: float,
    profile: Path | None,
    broker: int,
) -> dict[str, Any]:
    """From the first consumer holding its partitions until every event's sync is recorded."""
    conn = await asyncpg.connect(dsn)
    try:
        while not any(s.ready_file.exists() for s in services):
            for s in services:
                if s.process.poll() is not None:
                    raise RuntimeError(f"{s.name} exited with code {s.process.returncode}")
            await asyncio.sleep(0.01)
        started = time.perf_counter()
        if profile is not None:
            for s in services:
                start_profiler(s, profile)
        cpu_before = {s.name: cpu_seconds(s.process.pid) for s in services}
        cpu_before["broker"] = cpu_seconds(broker)
        written = 0
        deadline = time.monotonic() + max(300.0, events / 20)
        while written < events:
            for s in services:
                if s.process.poll() is not None:
                    raise RuntimeError(f"{s.name} exited with code {s.process.returncode}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {written} of {events} events written")
            await asyncio.sleep(0.05)
            written = await conn.fetchval(
                "SELECT count(*) FROM sync_events WHERE connection_id = ANY($1::uuid[])",
                connection_ids,
            )
        seconds = time.perf_counter() - started
        cpu = {s.name: cpu_seconds(s.process.pid) - cpu_before[s.name] for s in services}
        cpu["broker"] = cpu_seconds(broker) - cpu_before["broker"]
        cpu["postgres_backends"] = await backend_cpu_seconds(conn)
        for s in services:
            if s.profiler is not None:
                s.profiler.send_signal(signal.SIGINT)
                s.profiler.wait(30)
        idle_before = {s.name: cpu_seconds(s.process.pid) for s in services}
        await asyncio.sleep(idle_seconds)
        idle = {
            s.name: (cpu_seconds(s.process.pid) - idle_before[s.name]) / idle_seconds
            for s in services
        }
        stored = await conn.fetchval(
            "SELECT (SELECT count(*) FROM broker_fills WHERE connection_id = ANY($1::uuid[]))"
            " + (SELECT count(*) FROM broker_cash_movements"
            " WHERE connection_id = ANY($1::uuid[]))",
            connection_ids,
        )
    finally:
        await conn.close()
    return {
        "events": written,
        "deals_queued": deals,
        "deals_written": stored,
        "seconds": round(seconds, 3),
        "events_per_s": round(written / seconds, 1),
        "deals_per_s": round(stored / seconds, 1),
        "cpu_share": {name: round(c / seconds, 3) for name, c in cpu.items()},
        # Steadier than shares on a shared machine: CPU spent per deal written.
        "cpu_ms_per_deal": {name: round(1000 * c / stored, 4) for name, c in cpu.items()},
        "idle_cpu_share": {name: round(c, 4) for name, c in idle.items()},
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Both parts on one embedded Postgres and broker: the floor first (its own topic and table),
    then the backlog, queued on the raw topic before the normalizer and writer start, with
    tracing to files sampled as `--trace-sample-ratio` says (the dev stack's share by default) and
    the dev stack's Kafka settings."""
    with contextlib.ExitStack() as stack:
        state = (
            Path(args.state_dir)
            if args.state_dir
            else Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="poscal-bench-")))
        )
        (state / "run").mkdir(parents=True, exist_ok=True)
        postgres = stack.enter_context(EmbeddedPostgres(log_path=state / "postgres.log"))
        broker = stack.enter_context(EmbeddedBroker(log_path=state / "broker.log"))
        bootstrap = broker.bootstrap_servers
        suffix = uuid.uuid4().hex[:8]
        topics = Topics(
            raw=f"bench.raw.{suffix}",
            canonical=f"bench.canonical.{suffix}",
            dead_letter=f"bench.deadletter.{suffix}",
        )
        asyncio.run(apply_migrations(postgres.dsn))
        asyncio.run(ensure_topics(bootstrap, pipeline_topics(topics)))
        from services.shared.crypto import new_master_key_base64

        master_key = new_master_key_base64()
        connection_ids, deals, values = asyncio.run(
            queue_backlog(
                postgres.dsn,
                bootstrap,
                topics.raw,
                args.events,
                args.connections,
                master_key,
                args.trace_sample_ratio,
            )
        )
        broker_process = broker_pid(broker.port)
        floors = [
            asyncio.run(floor(postgres.dsn, bootstrap, values, args.floor_batch, broker_process))
        ]
        env = {
            "DATABASE_URL": postgres.dsn,
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "POSCAL_TOPIC_RAW": topics.raw,
            "POSCAL_TOPIC_CANONICAL": topics.canonical,
            "POSCAL_TOPIC_DEAD_LETTER": topics.dead_letter,
            "POSCAL_LOG_FORMAT": "json",
            **EMBEDDED_BROKER_CONSUMER_ENV,  # as the dev stack runs them
            # The SDK's sampler: the services follow the decision each record's context carries.
            "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
            "OTEL_TRACES_SAMPLER_ARG": str(args.trace_sample_ratio),
        }
        services = [start_service(name, env, state) for name in SERVICES]
        try:
            profile = Path(args.profile).resolve() if args.profile else None
            if profile is not None:
                profile.mkdir(parents=True, exist_ok=True)
            drained = asyncio.run(
                drain(
                    postgres.dsn,
                    services,
                    connection_ids,
                    len(values),
                    deals,
                    args.idle_seconds,
                    profile,
                    broker_process,
                )
            )
        finally:
            for s in services:
                stop_process(s.process, signal.SIGTERM, timeout=10)
                if s.profiler is not None and s.profiler.poll() is None:
                    s.profiler.kill()
        # Measured again once the services are gone: the ratio takes the faster of the two, so
        # a machine busier during one of them does not flatter the pipeline.
        floors.append(
            asyncio.run(floor(postgres.dsn, bootstrap, values, args.floor_batch, broker_process))
        )
    fastest = max(floors, key=lambda f: f["rows_per_s"])
    ratio = drained["deals_per_s"] / fastest["rows_per_s"]
    return {
        "benchmark": "pipeline_drain",
        "connections": args.connections,
        "trace_sample_ratio": args.trace_sample_ratio,
        "floor": {
            "name": "kafka_to_postgres_one_process",
            "rows_per_s": fastest["rows_per_s"],
            "before": floors[0],
            "after": floors[1],
        },
        "pipeline": drained,
        "ratio_deals_to_floor_rows": round(ratio, 4),
        "target_ratio": TARGET_RATIO,
        "target_met": ratio >= TARGET_RATIO,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=50_000, help="webhooks queued")
    parser.add_argument("--connections", type=int, default=20)
    parser.add_argument("--floor-batch", type=int, default=2000, help="records per floor fetch")
    parser.add_argument("--idle-seconds", type=float, default=5.0)
    parser.add_argument("--state-dir", help="keep the services' logs and spans here")
    parser.add_argument("--profile", metavar="DIR", help="py-spy profiles of both services here")
    parser.add_argument(
        "--trace-sample-ratio",
        type=float,
        default=DEV_TRACE_SAMPLE_RATIO,
        help="share of the events' traces recorded (the dev stack's by default; 1: every one)",
    )
    args = parser.parse_args(argv)
    result = run(args)
    sys.stdout.write(orjson.dumps(result).decode() + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
