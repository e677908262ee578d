"""`poscal-sync dev`: start the embedded stack, optionally run the demo, stop on a signal."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from services.api.dashboard import PAGE_PATH
from services.api.tokens import mint_token
from services.devstack.demo import run_demo
from services.devstack.ports import PortInUse
from services.devstack.stack import API_JWT_SECRET, SERVICES, DevStack

# How long the dashboard link printed for the demo user signs them in.
DASHBOARD_LINK_MINUTES = 60


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
        print(
            "metrics: " + ", ".join(f"{name} {stack.metrics_url(name)}" for name in SERVICES),
            flush=True,
        )
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


def dashboard_link(
    api_url: str, jwt_secret: str, user_id: uuid.UUID, *, issuer: str | None = None
) -> str:
    """The dashboard with a short-lived access token for `user_id` in its fragment: the browser
    never sends a fragment to the server, and the page takes it out of the address bar."""
    token = mint_token(
        jwt_secret,
        user_id,
        now=datetime.now(UTC),
        lifetime=timedelta(minutes=DASHBOARD_LINK_MINUTES),
        issuer=issuer,
    )
    return f"{api_url}{PAGE_PATH}#access_token={token}"


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
        demo_run = await run_demo(
            env["DATABASE_URL"],
            env["POSCAL_MASTER_KEY"],
            stack.ingest_url,
            positions=demo_positions,
            say=lambda line: print(line, flush=True),
        )
        print("see the traces: poscal-sync traces --last 3", flush=True)
        if exit_after_demo:
            return
        link = dashboard_link(
            stack.api_url,
            env[API_JWT_SECRET],
            demo_run.user_id,
            issuer=os.environ.get("POSCAL_API_JWT_ISSUER") or None,
        )
        print(
            f"the dashboard, signed in as the demo user for {DASHBOARD_LINK_MINUTES} minutes:"
            f" {link}",
            flush=True,
        )
    print("running; Ctrl-C to stop", flush=True)
    while True:
        stack.check_alive()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.sleep(1)
