"""A real ingest process killed with SIGKILL right after answering: the attempts it had not
written yet are gone, but the audit says so. The next ingest to start finds the dead instance
and records a durable gap naming it and a window covering every attempt it may have lost. A
clean stop, by contrast, writes everything and leaves no gap."""

from __future__ import annotations

import asyncio
import socket
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from services.shared.settings import Topics
from tests.support.service_process import ServiceProcess, ingest_process, wait_until_ready

pytestmark = pytest.mark.e2e

ATTEMPTS = 3


async def _fetch(database_url: str, query: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(database_url)
    try:
        return list(await conn.fetch(query, *args))
    finally:
        await conn.close()


def _instance_of(database_url: str, service: ServiceProcess) -> asyncpg.Record:
    [row] = asyncio.run(
        _fetch(
            database_url,
            "SELECT * FROM ingest_instances WHERE host = $1 AND pid = $2",
            socket.gethostname(),
            service.pid,
        )
    )
    return row


def _gaps_of(database_url: str, instance_id: uuid.UUID) -> list[asyncpg.Record]:
    return asyncio.run(
        _fetch(database_url, "SELECT * FROM webhook_audit_gaps WHERE instance_id = $1", instance_id)
    )


def _attempts_by(database_url: str, agent: str) -> list[asyncpg.Record]:
    return asyncio.run(
        _fetch(database_url, "SELECT * FROM webhook_attempts WHERE user_agent = $1", agent)
    )


def _refused_attempts(url: str, agent: str) -> None:
    """ATTEMPTS deliveries to connections that do not exist: each answered 401, and audited."""
    with httpx.Client(base_url=url, timeout=10) as client:
        for _ in range(ATTEMPTS):
            response = client.post(
                f"/v1/webhooks/mt5/{uuid.uuid4()}",
                content=b"{}",
                headers={"content-type": "application/json", "user-agent": agent},
            )
            assert response.status_code == 401


def _ingest(
    directory: Path, database_url: str, kafka_bootstrap: str, master_key: str, **env: str
) -> tuple[ServiceProcess, str]:
    directory.mkdir(exist_ok=True)
    return ingest_process(
        directory,
        database_url,
        kafka_bootstrap,
        master_key,
        POSCAL_TOPIC_RAW=Topics().raw + f".audit.{uuid.uuid4().hex[:8]}",
        POSCAL_INSTANCE_CHECK_SECONDS="1",
        **env,
    )


def test_an_ingest_killed_with_unwritten_attempts_leaves_a_durable_gap_covering_them(
    tmp_path: Path, database_url: str, kafka_bootstrap: str, master_key: str
) -> None:
    agent = f"lost-{uuid.uuid4().hex[:8]}"
    # Attempts stay queued in memory: this instance writes nothing before it dies.
    doomed, doomed_url = _ingest(
        tmp_path / "doomed",
        database_url,
        kafka_bootstrap,
        master_key,
        POSCAL_AUDIT_FLUSH_SECONDS="3600",
    )
    with doomed:
        wait_until_ready(doomed, doomed_url)
        dead = _instance_of(database_url, doomed)
        first_sent = datetime.now(UTC)
        _refused_attempts(doomed_url, agent)
        last_answered = datetime.now(UTC)
        doomed.kill()
    assert _attempts_by(database_url, agent) == []  # really lost: the gap is not hypothetical

    successor, successor_url = _ingest(tmp_path / "next", database_url, kafka_bootstrap, master_key)
    with successor:
        wait_until_ready(successor, successor_url)
        successor.wait_for(lambda: bool(_gaps_of(database_url, dead["instance_id"])), "a gap")
        [gap] = _gaps_of(database_url, dead["instance_id"])
        assert gap["reason"] == "instance_lost"
        assert gap["window_start"] <= first_sent
        assert gap["window_end"] >= last_answered
        assert gap["resolved_at"] is None
        assert _instance_of(database_url, doomed)["state"] == "lost"
        successor.wait_for_log(
            "an ingest instance died without recording all its attempts",
            lost_instance_id=str(dead["instance_id"]),
            alert="audit_gap",
        )
        living = _instance_of(database_url, successor)
        assert successor.terminate() in (0, -15)
    assert _instance_of(database_url, successor)["state"] == "stopped"
    assert _gaps_of(database_url, living["instance_id"]) == []


def test_a_clean_stop_writes_every_queued_attempt_and_leaves_no_gap(
    tmp_path: Path, database_url: str, kafka_bootstrap: str, master_key: str
) -> None:
    agent = f"kept-{uuid.uuid4().hex[:8]}"
    ingest, url = _ingest(
        tmp_path, database_url, kafka_bootstrap, master_key, POSCAL_AUDIT_FLUSH_SECONDS="3600"
    )
    with ingest:
        wait_until_ready(ingest, url)
        _refused_attempts(url, agent)
        assert ingest.terminate() in (0, -15)
    assert len(_attempts_by(database_url, agent)) == ATTEMPTS
    instance = _instance_of(database_url, ingest)
    assert instance["state"] == "stopped"
    assert _gaps_of(database_url, instance["instance_id"]) == []
