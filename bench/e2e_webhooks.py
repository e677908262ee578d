"""End-to-end benchmark: signed MT5 deal webhooks (1-5 deals each), sent open loop at fixed
rates to the real pipeline (ingest, normalizer, writer and the rest of the dev stack as local
processes over the embedded Postgres and broker), timed from when each was due to when its
fills and journal rows were committed. Prints one JSON line per mode:

- `latency`: a fixed rate (500/s); target p99 <= 150 ms.
- `saturation`: rising fixed rates, each from an empty pipeline, until one is not sustained
  (its p99 above `--sustain-p99-ms`: a backlog growing); target >= 1,500 events/s sustained.
- `memory`: a fixed rate (500/s) for `--rss-minutes`; every process' resident memory sampled
  from /proc; target: each service's flat (the slope of a linear fit over the second half).

Each line carries the floors measured in the same run (the broker's batched produce and consume
rates, the generator's own CPU share) and a boolean per target.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import secrets
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, overload

import asyncpg
import orjson

from bench.broker_floor import BrokerFloor, measure_broker_floor
from bench.commits import VisibilityProbe, wait_until_committed
from bench.load_generator import Address, at_fixed_rate, signed_webhook
from bench.proc_stats import StackProcess, cpu_seconds, resident_kib, stack_processes
from bench.stats import summary_ms
from bench.windows import ACCEPTED, Outcome, Window, memory_figures, rss_verdict
from bench.workload import Delivery, Sender, TemplateBody, Traffic, template_stream
from services.devstack.demo import DEMO_SERVER, create_demo_connection, demo_account
from services.devstack.stack import DevStack
from services.shared.signatures import decode_secret

TARGET_P99_MS = 150.0
TARGET_SUSTAINED_PER_S = 1500.0
SERVICES = ("ingest", "poller", "normalizer", "writer", "api")


class _Requests(Sequence[bytes]):
    """One chunk's webhooks, signed before it starts, noting when the generator takes each to
    write it (its send time, on the wall clock). One taken more than `resign_after` seconds
    after the chunk was signed (the generator queued it behind a server falling behind) is
    signed again then, so that it never reaches ingest outside its timestamp tolerance.

    Request 0 is due at the chunk's start and leaves at once (every connection is idle then):
    its send time is the start the others' due times count from."""

    def __init__(self, address: Address, deliveries: list[Delivery], resign_after: float) -> None:
        self._address = address
        self._deliveries = deliveries
        self._resign_after = resign_after
        self.signed_at = time.time()
        self._requests = [self._signed(d, int(self.signed_at)) for d in deliveries]
        self.sent = [0.0] * len(deliveries)
        self.resigned = 0

    def _signed(self, d: Delivery, timestamp: int) -> bytes:
        return signed_webhook(self._address, d.path, d.key, d.body, d.webhook_id, timestamp)

    def __len__(self) -> int:
        return len(self._requests)

    @overload
    def __getitem__(self, index: int) -> bytes: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[bytes]: ...
    def __getitem__(self, index: int | slice) -> bytes | Sequence[bytes]:
        if isinstance(index, slice):
            return self._requests[index]
        now = time.time()
        self.sent[index] = now
        if now - self.signed_at > self._resign_after:
            self.resigned += 1
            return self._signed(self._deliveries[index], int(now))
        return self._requests[index]


async def _rows_of(conn: asyncpg.Connection, connection_ids: list[Any]) -> tuple[int, int]:
    """Fills and journal rows these connections have."""
    fills = await conn.fetchval(
        "SELECT count(*) FROM broker_fills WHERE connection_id = ANY($1::uuid[])", connection_ids
    )
    journal = await conn.fetchval(
        "SELECT count(*) FROM trading_journal WHERE connection_id = ANY($1::uuid[])",
        connection_ids,
    )
    return int(fills), int(journal)


@dataclass
class Bench:
    stack: DevStack
    args: argparse.Namespace
    template: list[TemplateBody]
    floor: BrokerFloor | None = None

    @property
    def database_url(self) -> str:
        return self.stack.env()["DATABASE_URL"]

    async def traffic(self, events: int) -> Traffic:
        """Fresh connections for a mode: enough for `events` webhooks."""
        width = self.args.connections
        needed = Traffic.senders_needed(events, len(self.template), width)
        senders = [await self._sender() for _ in range(needed)]
        return Traffic(senders, self.template, width, secrets.token_hex(6))

    async def _sender(self) -> Sender:
        env = self.stack.env()
        account = demo_account()
        _, created = await create_demo_connection(
            env["DATABASE_URL"], env["POSCAL_MASTER_KEY"], self.stack.ingest_url, account
        )
        path = created.webhook_url.removeprefix(self.stack.ingest_url)
        key = decode_secret(created.webhook_secret)
        return Sender(created.connection_id, path, key, account.login)

    async def _send(self, traffic: Traffic, first: int, count: int, rate: float) -> Outcome:
        """Webhooks first..first+count at `rate`, in chunks of `--chunk-seconds` (each signed
        just before it; the next starts once the last is answered). Stops early, the rest
        unsent, after a chunk whose requests left more than `--max-late-seconds` behind their
        schedule: ingest can no longer take the rate, and the run would only grow longer."""
        address = Address("127.0.0.1", self.stack.port)
        chunk = max(1, round(rate * self.args.chunk_seconds))
        outcome = Outcome()
        for start in range(0, count, chunk):
            signing_started = time.process_time()
            requests = _Requests(
                address,
                [traffic.delivery(first + i) for i in range(start, min(count, start + chunk))],
                resign_after=self.args.resign_after_seconds,
            )
            outcome.signing_cpu_seconds += time.process_time() - signing_started
            result = await at_fixed_rate(
                address, requests, rate, self.args.sockets, timeout_s=self.args.drain_seconds
            )
            began = requests.sent[0]
            outcome.due += [began + i / rate for i in range(len(requests))]
            outcome.sent += requests.sent
            outcome.answered_s += result.latencies_s
            outcome.status += result.statuses
            outcome.sending_seconds += result.wall_seconds
            outcome.sending_cpu_seconds += result.cpu_seconds
            outcome.max_send_lag_s = max(outcome.max_send_lag_s, result.max_send_lag_s or 0.0)
            outcome.resigned += requests.resigned
            outcome.chunks += 1
            late = max(s - began - i / rate for i, s in enumerate(requests.sent) if s)
            if late > self.args.max_late_seconds and start + chunk < count:
                outcome.unsent = count - start - chunk
                break
        return outcome

    async def run(
        self,
        traffic: Traffic,
        rate: float,
        seconds: float,
        first: int = 0,
        probe_every: int = 0,
        rss: dict[str, list[tuple[float, int]]] | None = None,
    ) -> Window:
        """Webhooks `first`.. of `traffic`, `rate` per second for `seconds`; then until every
        accepted one is committed (or none more for `--drain-seconds`)."""
        count = max(1, round(rate * seconds))
        processes = stack_processes()
        probed = list(range(0, count, probe_every)) if probe_every else []
        probe = None
        if probed:
            # Only when to start looking: an event looked for before it is due is not found.
            planned = time.time()
            due = [(traffic.event_id(first + i), planned + i / rate) for i in probed]
            interval = self.args.probe_interval_ms / 1000
            until = planned + seconds + 2 * self.args.drain_seconds
            probe = VisibilityProbe(self.database_url, due, interval, until)
        cpu_before = {p.name: cpu_seconds(p) for p in processes}
        sampling = None
        if rss is not None:
            sampling = asyncio.create_task(self._sample_rss(processes, rss))
        started = time.perf_counter()
        try:
            outcome = await self._send(traffic, first, count, rate)
        finally:
            if sampling is not None:
                sampling.cancel()
        elapsed = time.perf_counter() - started
        stack_cpu = {
            p.name: round((cpu_seconds(p) - cpu_before[p.name]) / elapsed, 3) for p in processes
        }
        accepted = [i for i, status in enumerate(outcome.status) if status == ACCEPTED]
        conn = await asyncpg.connect(self.database_url)
        try:
            committed = await wait_until_committed(
                conn, [traffic.event_id(first + i) for i in accepted], self.args.drain_seconds
            )
            fills, journal = await _rows_of(conn, traffic.connection_ids(first + count))
        finally:
            await conn.close()
        # The fills of earlier runs of the same traffic (earlier steps) are counted again.
        expected = sum(traffic.fills(i) for i in range(first)) + sum(
            traffic.fills(first + i) for i in accepted
        )
        found = probe.result(timeout=2 * self.args.drain_seconds) if probe else None
        return Window(
            traffic, first, outcome, committed, stack_cpu, expected, fills, journal, found, probed
        )

    async def _sample_rss(
        self, processes: list[StackProcess], into: dict[str, list[tuple[float, int]]]
    ) -> None:
        started = time.monotonic()
        while True:
            elapsed = time.monotonic() - started
            for process in processes:
                try:
                    into.setdefault(process.name, []).append((elapsed, resident_kib(process)))
                except FileNotFoundError:
                    continue
            await asyncio.sleep(self.args.rss_interval_seconds)

    def floors(self, window: Window | None = None) -> dict[str, Any]:
        assert self.floor is not None
        floors: dict[str, Any] = {"broker": asdict(self.floor)}
        if window is not None:
            floors["generator_cpu_share_of_machine"] = window.generator()["share_of_machine"]
        return floors

    def line(self, mode: str, **figures: Any) -> dict[str, Any]:
        return {
            "benchmark": "e2e_webhooks",
            "mode": mode,
            "connections": self.args.connections,
            "sockets": self.args.sockets,
            **figures,
        }


def _events(rate: float, seconds: float) -> int:
    return max(1, round(rate * seconds))


async def latency_mode(bench: Bench) -> dict[str, Any]:
    args = bench.args
    traffic = await bench.traffic(_events(args.rate, args.latency_seconds))
    window = await bench.run(traffic, args.rate, args.latency_seconds, probe_every=args.probe_every)
    # Events due during the warm-up must commit too, but are not in the percentiles.
    warm = args.warmup_seconds * args.rate
    measured = [i for i in window.accepted() if i >= warm]
    latency = summary_ms(window.latencies(measured))
    p99_met = latency["p99"] <= TARGET_P99_MS and len(measured) > 0
    return bench.line(
        "latency",
        rate_per_s=args.rate,
        seconds=args.latency_seconds,
        warmup_seconds=args.warmup_seconds,
        events=window.events(),
        latency_ms={"from": "due", "to": "commit", "measured": len(measured), **latency},
        visibility=window.visibility(args.probe_interval_ms / 1000),
        generator=window.generator(),
        stack_cpu_cores=window.stack_cpu_cores,
        floors=bench.floors(window),
        ratios={"p99_to_target": round(latency["p99"] / TARGET_P99_MS, 3)},
        targets={
            f"p99_ms<={TARGET_P99_MS:g}_at_{args.rate:g}_per_s": p99_met,
            "all_committed": window.all_committed(),
        },
    )


async def saturation_mode(bench: Bench) -> dict[str, Any]:
    """Each rate for `--step-seconds` from an empty pipeline (the last step drained first), up
    to the first not sustained: a rate is sustained when its events' p99, due to committed,
    stays within `--sustain-p99-ms` (a pipeline slower than the rate builds a backlog, and its
    latency grows with the step) and every one of them is committed."""
    args = bench.args
    rates = [float(r) for r in args.steps.split(",")]
    traffic = await bench.traffic(round(sum(rates) * args.step_seconds) + len(rates))
    steps: list[dict[str, Any]] = []
    windows: list[Window] = []
    first = 0
    for rate in rates:
        window = await bench.run(traffic, rate, args.step_seconds, first=first)
        first += len(window.outcome.status)
        windows.append(window)
        latency = summary_ms(window.latencies(window.accepted()))
        generator = window.generator()
        start = window.outcome.due[0]
        committed_rate = (
            window.commits_between(start, start + args.step_seconds) / args.step_seconds
        )
        sustained = latency["p99"] <= args.sustain_p99_ms and window.all_committed()
        steps.append(
            {
                "offered_per_s": rate,
                "committed_per_s_during_step": round(committed_rate, 1),
                "events": window.events(),
                "latency_ms": latency,
                "generator": generator,
                "stack_cpu_cores": window.stack_cpu_cores,
                "sustained": sustained,
            }
        )
        if not sustained:
            break
    sustained_rates = [s["offered_per_s"] for s in steps if s["sustained"]]
    sustained_rate = max(sustained_rates, default=0.0)
    # A step either ends sustained or is the last one.
    assert all(s["sustained"] for s in steps[:-1])
    peak = max(s["committed_per_s_during_step"] for s in steps)
    floor = bench.floor
    assert floor is not None
    return bench.line(
        "saturation",
        step_seconds=args.step_seconds,
        sustain_p99_ms=args.sustain_p99_ms,
        steps=steps,
        sustained_per_s=sustained_rate,
        peak_committed_per_s=peak,
        generator_cpu_share_of_machine_max=max(s["generator"]["share_of_machine"] for s in steps),
        floors=bench.floors(),
        ratios={
            "sustained_to_target": round(sustained_rate / TARGET_SUSTAINED_PER_S, 3),
            "sustained_to_broker_produce": round(sustained_rate / floor.produce_per_s, 4),
            "sustained_to_broker_consume": round(sustained_rate / floor.consume_per_s, 4),
        },
        targets={
            f"sustained_per_s>={TARGET_SUSTAINED_PER_S:g}": sustained_rate
            >= TARGET_SUSTAINED_PER_S,
            "all_committed": all(w.all_committed() for w in windows),
        },
    )


async def memory_mode(bench: Bench) -> dict[str, Any]:
    args = bench.args
    seconds = args.rss_minutes * 60
    traffic = await bench.traffic(_events(args.rate, seconds))
    rss: dict[str, list[tuple[float, int]]] = {}
    window = await bench.run(traffic, args.rate, seconds, rss=rss)
    bound = args.rss_flat_mib_per_min
    memory = {name: memory_figures(samples, bound) for name, samples in sorted(rss.items())}
    verdict = rss_verdict(
        memory, SERVICES, args.rss_minutes, args.rss_interval_seconds, window.outcome.unsent
    )
    return bench.line(
        "memory",
        rate_per_s=args.rate,
        minutes=args.rss_minutes,
        samples=min((len(s) for s in rss.values()), default=0),
        sample_interval_seconds=args.rss_interval_seconds,
        flat_bound_mib_per_min=bound,
        # Postgres: the private memory of all its processes; the broker keeps every record in
        # memory by design (tansu's memory storage), so neither is judged.
        rss=memory,
        events=window.events(),
        latency_ms={
            "from": "due",
            "to": "commit",
            **summary_ms(window.latencies(window.accepted())),
        },
        generator=window.generator(),
        stack_cpu_cores=window.stack_cpu_cores,
        floors=bench.floors(window),
        targets={
            **verdict,
            "all_committed": window.all_committed(),
        },
    )


MODES = {"latency": latency_mode, "saturation": saturation_mode, "memory": memory_mode}


async def _measure(stack: DevStack, args: argparse.Namespace) -> None:
    template = template_stream(args.template_webhooks, DEMO_SERVER)
    bench = Bench(stack, args, template)
    # Records the size of the raw topic's (each webhook body goes base64 into its envelope).
    values = [
        base64.b64encode(template[i % len(template)].for_login(50_000_000))
        for i in range(args.floor_records)
    ]
    bench.floor = await measure_broker_floor(stack.env()["KAFKA_BOOTSTRAP_SERVERS"], values)
    for mode in args.modes.split(","):
        line = await MODES[mode](bench)
        sys.stdout.write(orjson.dumps(line).decode() + "\n")
        sys.stdout.flush()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add = parser.add_argument
    add("--modes", default="latency,saturation,memory", help="comma-separated, in this order")
    add("--connections", type=int, default=20, help="MT5 connections sending at once")
    add("--rate", type=float, default=500.0, help="events/s of the latency and memory modes")
    add("--latency-seconds", type=float, default=60.0)
    add("--warmup-seconds", type=float, default=5.0, help="latency mode: left out of percentiles")
    add("--steps", default="250,500,750,1000,1250,1500,2000,2500,3000", help="saturation rates")
    add("--step-seconds", type=float, default=15.0)
    add("--sustain-p99-ms", type=float, default=1000.0, help="a sustained rate's p99 at most")
    add("--rss-minutes", type=float, default=10.0, help="memory mode's length")
    add("--rss-interval-seconds", type=float, default=5.0)
    add("--rss-flat-mib-per-min", type=float, default=1.0, help="flat: |second-half slope| <=")
    add("--probe-every", type=int, default=10, help="latency mode: every Nth event probed (0: off)")
    add("--probe-interval-ms", type=float, default=10.0)
    add("--floor-records", type=int, default=20000, help="records for the broker floor")
    add("--template-webhooks", type=int, default=3000, help="webhooks per connection's stream")
    add("--sockets", type=int, default=128, help="keep-alive connections (ingest: 256 at once)")
    add("--chunk-seconds", type=float, default=30.0, help="signed just before each chunk")
    add("--resign-after-seconds", type=float, default=120.0, help="a request sent this late")
    add("--max-late-seconds", type=float, default=5.0, help="stop after a chunk sent this late")
    add("--drain-seconds", type=float, default=60.0, help="give up when none commits this long")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    unknown = set(args.modes.split(",")) - set(MODES)
    if unknown:
        raise SystemExit(f"unknown modes: {', '.join(sorted(unknown))}")
    with tempfile.TemporaryDirectory(prefix="poscal-bench-") as state_dir:
        # A benchmark measures throughput, not the abuse limits: lift them out of its way.
        unlimited = {
            "POSCAL_RATE_LIMIT_PER_CONNECTION": "100000000/minute",
            "POSCAL_RATE_LIMIT_PER_USER": "100000000/minute",
            # The generator's idle connections stay open between bursts: a server closing one
            # just as a request goes out on it would lose that request, not the pipeline.
            "POSCAL_KEEPALIVE_TIMEOUT_SECONDS": "300",
        }
        stack = DevStack(state_dir=Path(state_dir), port=0, api_port=0, extra_env=unlimited)
        stack.start()
        try:
            asyncio.run(_measure(stack, args))
        finally:
            stack.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
