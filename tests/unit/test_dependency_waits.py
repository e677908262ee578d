"""Waiting for a dependency at start-up: what is unreachable is retried, what is misconfigured
stops at once, a stop request ends the wait even mid-attempt, and what is logged names the
dependency's address without its credentials."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable

import asyncpg
import pytest
from structlog.testing import capture_logs

from services.shared.backoff import Backoff
from services.shared.database import POSTGRES_MISCONFIGURED, POSTGRES_UNREACHABLE, dsn_address
from services.shared.lifecycle import StoppedWaiting, connect_with_retry


def _backoff() -> Backoff:
    return Backoff(base_seconds=0.001, cap_seconds=0.001, _random=random.Random(7))


async def _wait_for_postgres(
    connect: Callable[[], Awaitable[str]],
    address: str = "db",
    misconfigured: tuple[type[BaseException], ...] = (),
) -> str:
    """Waiting for Postgres as the services do, its retries a millisecond apart."""
    return await connect_with_retry(
        "postgres",
        address,
        connect,
        asyncio.Event(),
        unreachable=POSTGRES_UNREACHABLE,
        backoff=_backoff(),
        misconfigured=misconfigured,
    )


@pytest.mark.parametrize(
    ("dsn", "address"),
    [
        ("postgresql://poscal:hunter2@db.internal:6543/poscal", "db.internal:6543/poscal"),
        ("postgres://user:p%40ss@127.0.0.1/journal?sslmode=require", "127.0.0.1:5432/journal"),
        (
            "postgresql:///poscal?host=/run/postgresql&password=hunter2",
            "/run/postgresql:5432/poscal",
        ),
    ],
)
def test_the_logged_address_of_a_dsn_never_carries_its_credentials(dsn: str, address: str) -> None:
    assert dsn_address(dsn) == address


async def test_unreachable_failures_are_retried_and_logged_until_the_dependency_answers() -> None:
    failures = [ConnectionRefusedError(111, "refused"), asyncpg.CannotConnectNowError("starting")]

    async def connect() -> str:
        if failures:
            raise failures.pop(0)
        return "connected"

    with capture_logs() as logs:
        connected = await _wait_for_postgres(connect, "db:5432/poscal")
    assert connected == "connected"
    waits = [e for e in logs if e["event"] == "waiting for a dependency"]
    assert [e["cause"] for e in waits] == ["ConnectionRefusedError", "CannotConnectNowError"]
    assert all(e["dependency"] == "postgres" and e["address"] == "db:5432/poscal" for e in waits)


async def test_a_misconfigured_client_is_not_waited_out_though_asyncpg_calls_it_interface() -> None:
    attempts = 0

    async def connect() -> str:
        nonlocal attempts
        attempts += 1
        raise asyncpg.exceptions.ClientConfigurationError("sslmode: invalid value 'bogus'")

    with pytest.raises(asyncpg.exceptions.ClientConfigurationError):
        await _wait_for_postgres(connect, misconfigured=POSTGRES_MISCONFIGURED)
    assert attempts == 1


async def test_a_configuration_failure_is_not_waited_out() -> None:
    attempts = 0

    async def connect() -> str:
        nonlocal attempts
        attempts += 1
        raise asyncpg.InvalidPasswordError("password authentication failed")

    with pytest.raises(asyncpg.InvalidPasswordError):
        await _wait_for_postgres(connect)
    assert attempts == 1


async def test_a_stop_request_ends_the_wait_and_cancels_the_attempt_in_progress() -> None:
    stop = asyncio.Event()
    began = asyncio.Event()
    cancelled = asyncio.Event()

    async def hangs() -> str:
        began.set()
        try:
            await asyncio.Event().wait()  # a host that never answers
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return "never"

    waiting = asyncio.create_task(
        connect_with_retry(
            "kafka", "k:9092", hangs, stop, unreachable=(OSError,), backoff=_backoff()
        )
    )
    await began.wait()
    stop.set()
    with pytest.raises(StoppedWaiting):
        await waiting
    assert cancelled.is_set()
