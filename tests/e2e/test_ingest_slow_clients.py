"""What a real ingest process bounds itself against slow or greedy clients: a body trickling in
past the body timeout is answered 408 and its connection closed (and audited), an idle kept-alive
connection is closed after the keep-alive timeout, and requests past the concurrency limit get
503 with Retry-After at once instead of waiting in a queue. Spoken over raw sockets, byte by
byte, as such clients would."""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import httpx
import pytest

from services.shared.settings import Topics
from services.shared.vault import CredentialVault
from tests.support.builders import new_connection
from tests.support.service_process import ingest_process, wait_until_ready

pytestmark = pytest.mark.e2e

BODY_TIMEOUT_SECONDS = 1
KEEPALIVE_TIMEOUT_SECONDS = 1
MAX_CONCURRENT = 2


IngestProcessStarter = Callable[..., Iterator[str]]


@pytest.fixture
def ingest_process_with(
    tmp_path: Path, database_url: str, kafka_bootstrap: str, master_key: str, topics: Topics
) -> IngestProcessStarter:
    """`yield from ingest_process_with(POSCAL_X="…")`: a real ingest process with that
    environment, publishing to the test's raw topic; its URL once it is ready, stopped after."""

    def start(**env: str) -> Iterator[str]:
        service, url = ingest_process(
            tmp_path,
            database_url,
            kafka_bootstrap,
            master_key,
            POSCAL_TOPIC_RAW=topics.raw,
            **env,
        )
        with service:
            wait_until_ready(service, url)
            yield url

    return start


@pytest.fixture
def strict_ingest(ingest_process_with: IngestProcessStarter) -> Iterator[str]:
    """A short body timeout and keep-alive."""
    yield from ingest_process_with(
        POSCAL_BODY_TIMEOUT_SECONDS=str(BODY_TIMEOUT_SECONDS),
        POSCAL_KEEPALIVE_TIMEOUT_SECONDS=str(KEEPALIVE_TIMEOUT_SECONDS),
    )


@pytest.fixture
def small_ingest(ingest_process_with: IngestProcessStarter) -> Iterator[str]:
    """Two requests at a time, and bodies given all the time they need."""
    yield from ingest_process_with(
        POSCAL_MAX_CONCURRENT_REQUESTS=str(MAX_CONCURRENT), POSCAL_BODY_TIMEOUT_SECONDS="600"
    )


def _socket(url: str, timeout: float = 30) -> socket.socket:
    parts = urlsplit(url)
    sock = socket.create_connection((parts.hostname or "", parts.port or 80), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


@pytest.fixture
def webhook_path(database_url: str, vault: CredentialVault) -> str:
    """A real connection's: only a known URL's body is read (an unknown one is refused first)."""

    async def create() -> str:
        conn = await asyncpg.connect(database_url)
        try:
            return (await new_connection(conn, vault)).webhook_path
        finally:
            await conn.close()

    return asyncio.run(create())


def _webhook_head(path: str, user_agent: str, length: int) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: ingest\r\n"
        f"Content-Type: application/json\r\nContent-Length: {length}\r\n"
        f"User-Agent: {user_agent}\r\n\r\n"
    ).encode()


def _closed_by_server(sock: socket.socket, within: float) -> bool:
    """True once the server closes; False if it is still open after `within` seconds."""
    sock.settimeout(within)
    try:
        while sock.recv(4096):
            pass
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True
    return True


async def _attempt_reasons(database_url: str, user_agent: str) -> list[tuple[int, str]]:
    conn = await asyncpg.connect(database_url)
    try:
        for _ in range(200):
            rows = await conn.fetch(
                "SELECT status_code, reason FROM webhook_attempts WHERE user_agent = $1",
                user_agent,
            )
            if rows:
                return [(r["status_code"], r["reason"]) for r in rows]
            await asyncio.sleep(0.05)
        return []
    finally:
        await conn.close()


def test_a_body_trickling_in_past_the_body_timeout_gets_408_and_the_connection_closed(
    strict_ingest: str, database_url: str, webhook_path: str
) -> None:
    agent = f"trickler-{uuid.uuid4().hex[:8]}"
    answered = threading.Event()
    with _socket(strict_ingest) as sock:
        sock.sendall(_webhook_head(webhook_path, agent, 100_000))

        def trickle() -> None:
            # A byte at a time, each well within the timeout of the one before: only a deadline
            # on the whole body stops this.
            while not answered.wait(0.1):
                try:
                    sock.sendall(b" ")
                except OSError:
                    return

        trickler = threading.Thread(target=trickle, daemon=True)
        trickler.start()
        response = http.client.HTTPResponse(sock)
        try:
            response.begin()
            body = json.loads(response.read())
        finally:
            answered.set()
            trickler.join()
        assert response.status == 408
        assert body["error"] == "request_timeout"
        assert response.getheader("connection") == "close"
        assert _closed_by_server(sock, within=10)
    assert asyncio.run(_attempt_reasons(database_url, agent)) == [(408, "body_timeout")]


def test_an_idle_keep_alive_connection_is_closed_after_the_keep_alive_timeout(
    strict_ingest: str,
) -> None:
    with _socket(strict_ingest) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: ingest\r\n\r\n")
        response = http.client.HTTPResponse(sock)
        response.begin()
        response.read()
        assert (response.status, response.getheader("connection")) == (200, None)
        # A bound for failing only, far from the setting: that the setting (not uvicorn's
        # default) is what uvicorn is given is tests/unit/test_ingest_server.py's to show.
        assert _closed_by_server(sock, within=60), "the idle connection was kept open"


def test_requests_past_the_concurrency_limit_get_503_at_once_and_slots_free_up_after(
    small_ingest: str, webhook_path: str
) -> None:
    holders = [_socket(small_ingest) for _ in range(MAX_CONCURRENT)]
    try:
        for holder in holders:  # each sends its headers and a little body, then waits
            holder.sendall(_webhook_head(webhook_path, "holder", 1000) + b"{")
        with httpx.Client(base_url=small_ingest, timeout=10) as client:
            # Positive signal that both holders are being answered: the limit is reached.
            for _ in range(400):
                if client.get("/openapi.json").status_code == 503:
                    break
            else:
                pytest.fail("the concurrency limit was never reached")
            refused = client.post(
                f"/v1/webhooks/mt5/{uuid.uuid4()}",
                content=b"{}",
                headers={"content-type": "application/json"},
            )
            assert refused.status_code == 503
            assert refused.json()["error"] == "unavailable"
            assert refused.headers["retry-after"] == "1"
            # Probes still answer while every slot is taken.
            assert client.get("/healthz").status_code == 200
            assert client.get("/readyz").status_code == 200
            for holder in holders:
                holder.close()
            for _ in range(400):
                if client.get("/openapi.json").status_code == 200:
                    break
            else:
                pytest.fail("the slots of the requests that went away were never freed")
    finally:
        for holder in holders:
            holder.close()
