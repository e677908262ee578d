"""`poscal-sync dev`: start the embedded stack, optionally run the demo, stop on a signal."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from services.devstack.demo import run_demo
from services.devstack.ports import PortInUse
from services.devstack.stack import DevStack


def run_dev(
    state_dir: Path,
    port: int,
    demo: bool,
    demo_positions: int,
    exit_after_demo: bool,
    api_port: int = 8090,
) -> int:
    stack = DevStack(
        state_dir=state_dir,
        port=port,
        api_port=api_port,
        database_url=os.environ.get("DATABASE_URL"),
        kafka_bootstrap_servers=os.environ.get("KAFKA_BOOTSTRAP_SERVERS"),
    )
    print(f"starting the stack in {state_dir} ...", flush=True)
    # SIGTERM behaves like Ctrl-C from here on, so every exit path runs stack.stop(). SIGINT is
    # set too: a shell that starts us in the background without job control ignores it.
    for stop_signal in (signal.SIGINT, signal.SIGTERM):
        signal.signal(stop_signal, signal.default_int_handler)
    try:
        stack.start()
        env = stack.env()
        print(
            f"ready: ingest {stack.ingest_url}, API {stack.api_url},"
            f" Postgres {without_password(env['DATABASE_URL'])},"
            f" Kafka {env['KAFKA_BOOTSTRAP_SERVERS']}",
            flush=True,
        )
        print(
            f"an API token for a user: poscal-sync api token --state-dir {state_dir}"
            " --user-id UUID",
            flush=True,
        )
        print(f"environment in {state_dir / 'stack.env'}, logs in {stack.logs}", flush=True)
        asyncio.run(_serve(stack, demo, demo_positions, exit_after_demo))
    except KeyboardInterrupt:
        print("\nstopping ...", flush=True)
    except PortInUse as exc:
        print(f"error: {exc}", flush=True)
        return 1
    finally:
        stack.stop()
        print("stopped: no process left behind", flush=True)
    return 0


def without_password(url: str) -> str:
    """A database URL fit to print: any password is masked."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if parts.password is not None:
        netloc = netloc.replace(f":{parts.password}@", ":***@", 1)
    query = urlencode(
        [(k, "***" if k == "password" else v) for k, v in parse_qsl(parts.query)], safe="*"
    )
    return urlunsplit(parts._replace(netloc=netloc, query=query))


async def _serve(stack: DevStack, demo: bool, demo_positions: int, exit_after_demo: bool) -> None:
    env = stack.env()
    if demo:
        await run_demo(
            env["DATABASE_URL"],
            env["POSCAL_MASTER_KEY"],
            stack.ingest_url,
            positions=demo_positions,
            say=lambda line: print(line, flush=True),
        )
        print("see the traces: poscal-sync traces --last 3", flush=True)
        if exit_after_demo:
            return
    print("running; Ctrl-C to stop", flush=True)
    while True:
        stack.check_alive()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.sleep(1)
