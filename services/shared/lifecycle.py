"""A service's life as a process: wait for its dependencies, report readiness, run until SIGINT
or SIGTERM, then let it finish its batch and stop."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import uvloop

from services.shared.backoff import Backoff
from services.shared.logging import get_logger, setup_logging
from services.shared.settings import ServiceSettings
from services.shared.tracing import setup_tracing

T = TypeVar("T")
_log = get_logger("poscal.lifecycle")


class StoppedWaiting(Exception):
    """Stop was asked for while a dependency was still awaited: nothing to finish, just exit."""


def run_service(
    name: str, settings: ServiceSettings, serve: Callable[[asyncio.Event], Awaitable[None]]
) -> int:
    """A consumer service's whole life: logging and tracing once, serve until signalled."""
    setup_logging(name, settings.log_level, settings.log_format)
    provider = setup_tracing(f"poscal-{name}", settings.trace_file)
    # A ready file left by an earlier run of this container would report a service that is
    # still waiting for its dependencies as ready.
    mark_not_ready(settings.ready_file)
    spare_the_collector()
    try:
        return run_until_signalled(serve, settings.shutdown_grace_seconds)
    finally:
        mark_not_ready(settings.ready_file)
        provider.shutdown()


def spare_the_collector() -> None:
    """What is alive once a service is set up (modules, models' validators, its settings) lives as
    long as the process: moved out of the collector's reach (`gc.freeze`), so the full
    collections a busy consumer's per-record garbage triggers no longer walk it every time, and
    young collections run less often (every 10,000 allocations, not 700)."""
    gc.freeze()
    _, middle, oldest = gc.get_threshold()
    gc.set_threshold(10_000, middle, oldest)


def run_until_signalled(
    serve: Callable[[asyncio.Event], Awaitable[None]], grace_seconds: float = 10.0
) -> int:
    """Run `serve` until SIGINT or SIGTERM sets its stop event, then give it `grace_seconds` to
    finish its batch and close its connections. One that cannot (its batch or its producer's
    flush waiting on a broker that went away) is cancelled and given as long again to unwind;
    one still running then is abandoned, and 1 returned. Nothing is lost either way: offsets
    are committed only after a batch is durable and every sink is idempotent, so the records
    it held are delivered again."""

    async def _main() -> bool:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        serving = asyncio.ensure_future(serve(stop))
        stopping = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait({serving, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if not serving.done():
                await asyncio.wait({serving}, timeout=grace_seconds)
            if not serving.done():
                _log.warning("not stopped within its grace; cancelling", grace_s=grace_seconds)
                serving.cancel()
                await asyncio.wait({serving}, timeout=grace_seconds)
            if not serving.done():
                _log.error("still running after cancellation; abandoned", grace_s=grace_seconds)
                return False
            with contextlib.suppress(asyncio.CancelledError):
                serving.result()
        except StoppedWaiting:
            _log.info("stopped before its dependencies were reachable")
        finally:
            stopping.cancel()
        return True

    # uvloop, as uvicorn runs ingest and the API: the consumers' Kafka and Postgres sockets cost
    # markedly less CPU on it than on asyncio's own loop. Run by hand rather than by
    # asyncio.Runner, which on closing waits for every task, an abandoned one too.
    loop = uvloop.new_event_loop()
    try:
        stopped = loop.run_until_complete(_main())
        if stopped:
            _finish_tasks(loop)
            loop.run_until_complete(loop.shutdown_asyncgens())
        return 0 if stopped else 1
    finally:
        loop.close()


def _finish_tasks(loop: asyncio.AbstractEventLoop) -> None:
    """Cancel what the service left running (as asyncio.run does) and wait for it to end."""
    left = asyncio.all_tasks(loop)
    for task in left:
        task.cancel()
    if left:
        loop.run_until_complete(asyncio.gather(*left, return_exceptions=True))


def mark_ready(ready_file: Path | None) -> None:
    """Tell a supervisor (the dev stack, an exec probe) that this service is ready."""
    if ready_file is not None:
        ready_file.parent.mkdir(parents=True, exist_ok=True)
        ready_file.touch()


def mark_not_ready(ready_file: Path | None) -> None:
    if ready_file is not None:
        ready_file.unlink(missing_ok=True)


def connect_backoff(cap_seconds: float) -> Backoff:
    """How often a service that cannot reach a dependency tries again."""
    return Backoff(base_seconds=0.25, cap_seconds=cap_seconds)


async def connect_with_retry(
    dependency: str,
    address: str,
    connect: Callable[[], Awaitable[T]],
    stop: asyncio.Event,
    *,
    unreachable: tuple[type[BaseException], ...],
    backoff: Backoff,
    misconfigured: tuple[type[BaseException], ...] = (),
) -> T:
    """`connect()`'s result once it succeeds; StoppedWaiting once `stop` is set (at any point,
    even during an attempt, which is then cancelled: `connect` must clean up after itself).

    Failures in `unreachable` are waited out with backoff, logged with the dependency, its
    address (never credentials) and the failure's type; any other failure is a configuration
    error (bad credentials, a database that does not exist) and propagates, as does one in
    `misconfigured` even where it is also of an `unreachable` type.
    """
    while not stop.is_set():
        attempt = asyncio.ensure_future(connect())
        stopping = asyncio.ensure_future(stop.wait())
        await asyncio.wait({attempt, stopping}, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        if not attempt.done():
            attempt.cancel()
            with contextlib.suppress(asyncio.CancelledError, *unreachable):
                await attempt
            break
        try:
            connected = attempt.result()
        except misconfigured:
            raise
        except unreachable as exc:
            delay = backoff.next_delay()
            _log.warning(
                "waiting for a dependency",
                dependency=dependency,
                address=address,
                cause=type(exc).__name__,
                retry_in_s=round(delay, 2),
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
            continue
        if backoff.attempt:
            _log.info("dependency reachable", dependency=dependency, address=address)
        backoff.reset()
        return connected
    raise StoppedWaiting(dependency)
