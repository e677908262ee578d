"""End-to-end benchmark: signed MT5 webhooks through the dev stack into the journal, against a
bare-Kafka baseline on the same broker. Prints one JSON object."""

from __future__ import annotations

import argparse
import asyncio
import itertools
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import httpx
import orjson
from aiokafka import AIOKafkaConsumer

from services.devstack.demo import (
    create_demo_connection,
    demo_account,
    encode_body,
    send_signed,
    wait_for_events,
)
from services.devstack.demo_trades import demo_stream
from services.devstack.stack import DevStack
from services.shared.connection_admin.connections import NewConnection
from services.shared.kafka import TopicSpec, create_producer, ensure_topics


@dataclass(frozen=True)
class Delivery:
    connection: NewConnection
    body: bytes


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


async def _prepare(stack: DevStack, connections: int, events: int) -> list[Delivery]:
    env = stack.env()
    per_connection = -(-events // connections)
    streams: list[list[Delivery]] = []
    for _ in range(connections):
        account = demo_account()
        _, created = await create_demo_connection(
            env["DATABASE_URL"], env["POSCAL_MASTER_KEY"], stack.ingest_url, account
        )
        bodies = [encode_body(b) for b in demo_stream(account, positions=per_connection)]
        streams.append([Delivery(created, body) for body in bodies[:per_connection]])
    # Interleave connections so partitions are loaded evenly, as real traffic is.
    interleaved = [d for group in itertools.zip_longest(*streams) for d in group if d]
    return interleaved[:events]


async def _drive(
    stack: DevStack, deliveries: list[Delivery], concurrency: int
) -> tuple[dict[str, float], str]:
    env = stack.env()
    sent_at: dict[str, float] = {}
    queue: asyncio.Queue[Delivery] = asyncio.Queue()
    for delivery in deliveries:
        queue.put_nowait(delivery)

    async def sender(client: httpx.AsyncClient) -> None:
        while not queue.empty():
            delivery = queue.get_nowait()
            started = time.time()
            response = await send_signed(client, delivery.connection, delivery.body)
            response.raise_for_status()
            sent_at[response.json()["event_id"]] = started

    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(timeout=30, limits=limits) as client:
        await asyncio.gather(*(sender(client) for _ in range(concurrency)))
    conn = await asyncpg.connect(env["DATABASE_URL"])
    try:
        for connection_id in {d.connection.connection_id for d in deliveries}:
            expected = sum(1 for d in deliveries if d.connection.connection_id == connection_id)
            await wait_for_events(conn, connection_id, expected, wait_seconds=120)
        # When the writer's transaction committed, where the server records it; otherwise the
        # row's insert time, which is earlier than the commit by the rest of the transaction.
        committed = await conn.fetchval("SHOW track_commit_timestamp") == "on"
        written = "pg_xact_commit_timestamp(xmin)" if committed else "recorded_at"
        rows = await conn.fetch(
            f"SELECT event_id::text, extract(epoch FROM {written})::float8 AS at"  # noqa: S608
            " FROM sync_events WHERE event_id = ANY($1::uuid[])",
            list(sent_at),
        )
    finally:
        await conn.close()
    latencies = {row["event_id"]: row["at"] - sent_at[row["event_id"]] for row in rows}
    return latencies, "commit" if committed else "insert"


async def _kafka_baseline(bootstrap: str, bodies: list[bytes]) -> float:
    """Events/s of producing the same payloads (acks=all) and consuming them back, bare."""
    topic = f"bench.baseline.{uuid.uuid4().hex[:8]}"
    await ensure_topics(bootstrap, [TopicSpec(topic, 6)])
    producer = create_producer(bootstrap, "bench-baseline")
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    await producer.start()
    await consumer.start()
    try:
        started = time.perf_counter()
        await asyncio.gather(
            *(
                producer.send_and_wait(topic, body, key=str(i % 4).encode())
                for i, body in enumerate(bodies)
            )
        )
        received = 0
        while received < len(bodies):
            fetched = await consumer.getmany(timeout_ms=1000)
            received += sum(len(batch) for batch in fetched.values())
        return len(bodies) / (time.perf_counter() - started)
    finally:
        await consumer.stop()
        await producer.stop()


async def _measure(stack: DevStack, args: argparse.Namespace) -> dict[str, object]:
    """Webhook-to-row latency (client send -> the writer's commit, from the commit timestamp of
    the event's `sync_events` row) and throughput, and a baseline in the same run on the same
    broker: the same payloads produced to and consumed from a bare topic. The ratio to the
    baseline is what to compare across machines."""
    deliveries = await _prepare(stack, args.connections, args.events)
    started = time.perf_counter()
    latencies, measured_to = await _drive(stack, deliveries, args.concurrency)
    seconds = time.perf_counter() - started
    baseline = await _kafka_baseline(
        stack.env()["KAFKA_BOOTSTRAP_SERVERS"], [d.body for d in deliveries]
    )
    values_ms = [v * 1000 for v in latencies.values()]
    throughput = len(latencies) / seconds
    return {
        "benchmark": "e2e_webhooks",
        "events": len(latencies),
        "connections": args.connections,
        "concurrency": args.concurrency,
        "seconds": round(seconds, 3),
        "events_per_s": round(throughput, 1),
        "latency_ms": {
            "p50": round(_percentile(values_ms, 0.50), 1),
            "p99": round(_percentile(values_ms, 0.99), 1),
            "mean": round(statistics.fmean(values_ms), 1),
            "to": measured_to,
        },
        "baseline": {"name": "bare_kafka_produce_consume", "events_per_s": round(baseline, 1)},
        "ratio_to_baseline": round(throughput / baseline, 4),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=400)
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="poscal-bench-") as state_dir:
        # A benchmark measures throughput, not the abuse limits: lift them out of its way.
        unlimited = {
            "POSCAL_RATE_LIMIT_PER_CONNECTION": "1000000/minute",
            "POSCAL_RATE_LIMIT_PER_USER": "1000000/minute",
        }
        stack = DevStack(state_dir=Path(state_dir), port=0, api_port=0, extra_env=unlimited)
        stack.start()
        try:
            result = asyncio.run(_measure(stack, args))
        finally:
            stack.stop()
    sys.stdout.write(orjson.dumps(result).decode() + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
