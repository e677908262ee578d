"""Each real service started while Postgres or Kafka is down: it waits and retries, reporting not
ready (and saying what it waits for, never a password), becomes ready without a restart once
both answer, and stops cleanly on SIGTERM while it waits.

"Down" is an address where nothing listens yet. Postgres comes up there as a proxy to the
session's (migrated) server, Kafka as a fresh broker started on that very port.
"""

from __future__ import annotations

import asyncio
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import httpx
import pytest

from services.devstack.broker import EmbeddedBroker
from services.devstack.demo import encode_body, signed_headers
from services.devstack.ports import free_port
from services.devstack.stack import pipeline_topics
from services.shared.kafka import ensure_topics
from services.shared.settings import Topics
from services.shared.vault import CredentialVault
from tests.support.builders import TestConnection, fixture_deals, mt5_body, new_connection
from tests.support.service_process import ServiceProcess
from tests.support.tcp_proxy import TcpProxy

pytestmark = pytest.mark.e2e

PASSWORD = "pw-that-must-never-be-logged-3f9c"


class LateDependencies:
    """A Postgres address and a Kafka address, both down until brought up."""

    def __init__(self, database_url: str, topics: Topics) -> None:
        session = urlsplit(database_url)
        assert session.port is not None
        self._session_port = session.port
        self.postgres_port = free_port()
        self.kafka_port = free_port()
        # The session's own database and user, at the late address, with a password in the DSN
        # (trust authentication ignores it) that must never appear in a log.
        self.database_url = (
            f"postgresql://{session.username}:{PASSWORD}@127.0.0.1:{self.postgres_port}"
            f"{session.path}"
        )
        self.bootstrap = f"127.0.0.1:{self.kafka_port}"
        self.topics = topics
        self._proxy: TcpProxy | None = None
        self._broker: EmbeddedBroker | None = None

    def postgres_up(self) -> None:
        self._proxy = TcpProxy(self.postgres_port, self._session_port).start()

    def kafka_up(self) -> None:
        self._broker = EmbeddedBroker(port=self.kafka_port).start()
        asyncio.run(ensure_topics(self.bootstrap, pipeline_topics(self.topics, partitions=1)))

    def env(self) -> dict[str, str]:
        return {
            "DATABASE_URL": self.database_url,
            "KAFKA_BOOTSTRAP_SERVERS": self.bootstrap,
            "POSCAL_TOPIC_RAW": self.topics.raw,
            "POSCAL_TOPIC_CANONICAL": self.topics.canonical,
            "POSCAL_TOPIC_DEAD_LETTER": self.topics.dead_letter,
            "POSCAL_KAFKA_SESSION_TIMEOUT_MS": "2000",
            "POSCAL_NORMALIZER_GROUP": f"late-normalizer-{uuid.uuid4().hex[:8]}",
            "POSCAL_WRITER_GROUP": f"late-writer-{uuid.uuid4().hex[:8]}",
        }

    def close(self) -> None:
        if self._broker is not None:
            self._broker.stop()
        if self._proxy is not None:
            self._proxy.stop()


@pytest.fixture
def late(database_url: str) -> Iterator[LateDependencies]:
    suffix = uuid.uuid4().hex[:8]
    topics = Topics(
        raw=f"late.{suffix}.raw",
        canonical=f"late.{suffix}.canonical",
        dead_letter=f"late.{suffix}.deadletter",
    )
    dependencies = LateDependencies(database_url, topics)
    yield dependencies
    dependencies.close()


def _service(
    name: str, late: LateDependencies, master_key: str, tmp_path: Path, **env: str
) -> ServiceProcess:
    return ServiceProcess(name, late.env() | {"POSCAL_MASTER_KEY": master_key} | env, tmp_path)


def _waits_for(service: ServiceProcess, dependency: str) -> None:
    service.wait_for_log("waiting for a dependency", dependency=dependency)


def _assert_no_secret_logged(service: ServiceProcess) -> None:
    assert PASSWORD not in service.log_text()


@pytest.mark.parametrize("name", ["writer", "poller"])
def test_a_service_needing_both_waits_for_postgres_then_kafka_and_is_ready_without_restart(
    name: str, late: LateDependencies, master_key: str, tmp_path: Path
) -> None:
    with _service(name, late, master_key, tmp_path) as service:
        waiting = service.wait_for_log("waiting for a dependency", dependency="postgres")
        assert (
            waiting["address"]
            == f"127.0.0.1:{late.postgres_port}{urlsplit(late.database_url).path}"
        )
        late.postgres_up()
        _waits_for(service, "kafka")
        assert not service.ready_file.exists()
        late.kafka_up()
        service.wait_for(service.ready_file.exists, "ready file")
        assert service.terminate() == 0
    _assert_no_secret_logged(service)


def test_the_normalizer_waits_for_kafka_and_joins_its_group_once_it_answers(
    late: LateDependencies, master_key: str, tmp_path: Path
) -> None:
    with _service("normalizer", late, master_key, tmp_path) as normalizer:
        _waits_for(normalizer, "kafka")
        assert not normalizer.ready_file.exists()
        late.kafka_up()
        normalizer.wait_for(normalizer.ready_file.exists, "ready file")
        normalizer.wait_for_log("normalizer consuming")
        assert normalizer.terminate() == 0


async def _new_connection(database_url: str, vault: CredentialVault) -> TestConnection:
    conn = await asyncpg.connect(database_url)
    try:
        return await new_connection(conn, vault)
    finally:
        await conn.close()


def test_ingest_serves_at_once_answers_503_until_postgres_and_kafka_answer_then_accepts(
    late: LateDependencies,
    master_key: str,
    database_url: str,
    vault: CredentialVault,
    tmp_path: Path,
) -> None:
    connection = asyncio.run(_new_connection(database_url, vault))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    webhook = url + urlsplit(connection.created.webhook_url).path
    body = encode_body(mt5_body(connection.login, fixture_deals()))
    secret = connection.created.webhook_secret

    def deliver(webhook_id: str) -> httpx.Response:
        return client.post(webhook, content=body, headers=signed_headers(secret, webhook_id, body))

    with (
        _service("ingest", late, master_key, tmp_path, POSCAL_INGEST_PORT=str(port)) as ingest,
        httpx.Client(timeout=10) as client,
    ):
        _waits_for(ingest, "postgres")
        ingest.wait_for(lambda: _answers(client, f"{url}/healthz"), "/healthz")
        assert client.get(f"{url}/readyz").status_code == 503
        refused = deliver("msg_before_postgres")
        assert (refused.status_code, refused.json()["error"]) == (503, "unavailable")
        assert refused.headers["retry-after"]

        late.postgres_up()
        _waits_for(ingest, "kafka")
        assert client.get(f"{url}/readyz").status_code == 503
        assert deliver("msg_before_kafka").status_code == 503

        late.kafka_up()
        ingest.wait_for(lambda: client.get(f"{url}/readyz").status_code == 200, "ready")
        assert deliver("msg_once_ready").status_code == 202
        status = ingest.terminate()
    assert status in (0, -signal.SIGTERM)  # uvicorn re-raises the SIGTERM it handled
    assert any(e.get("event") == "ingest stopped" for e in ingest.log_events())
    _assert_no_secret_logged(ingest)


def _answers(client: httpx.Client, url: str) -> bool:
    try:
        return client.get(url).status_code == 200
    except httpx.TransportError:
        return False


@pytest.mark.parametrize("name", ["ingest", "normalizer", "writer", "poller"])
def test_sigterm_while_waiting_for_a_dependency_stops_the_service_cleanly(
    name: str, late: LateDependencies, master_key: str, tmp_path: Path
) -> None:
    with _service(name, late, master_key, tmp_path, POSCAL_INGEST_PORT=str(free_port())) as service:
        service.wait_for_log("waiting for a dependency")
        status = service.terminate()
    assert status == 0 or (name == "ingest" and status == -signal.SIGTERM)
    assert "Traceback" not in service.log_text()
    assert not service.ready_file.exists()
    _assert_no_secret_logged(service)
