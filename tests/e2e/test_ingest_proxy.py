"""The reverse proxy of infra/nginx/ in front of a real ingest process: the configuration nginx
accepts, what it passes on (the webhook route and the probes, nothing else), and the header-read
timeout uvicorn lacks: a client that never finishes its headers is cut off."""

from __future__ import annotations

import re
import socket
import ssl
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from services.shared.settings import Topics
from tests.support.nginx import ProxyInFront, template_variables
from tests.support.service_process import ingest_process, wait_until_ready

pytestmark = pytest.mark.e2e

COMPOSE = Path(__file__).resolve().parents[2] / "infra" / "docker-compose.yml"


def proxy_values(ingest_upstream: str, api_upstream: str = "127.0.0.1:9") -> dict[str, str]:
    """The templates' settings (the API's upstream is not called by these specs)."""
    return {
        "INGEST_UPSTREAM": ingest_upstream,
        "API_UPSTREAM": api_upstream,
        "PROXY_HEADER_TIMEOUT": "1s",
        "PROXY_BODY_TIMEOUT": "10s",
        "PROXY_KEEPALIVE_TIMEOUT": "15s",
        "PROXY_MAX_BODY_SIZE": "256k",
        "API_PROXY_MAX_BODY_SIZE": "64k",
        "PROXY_CONNECTIONS_PER_CLIENT": "64",
    }


@pytest.fixture(scope="module")
def proxy(
    tmp_path_factory: pytest.TempPathFactory,
    database_url: str,
    kafka_bootstrap: str,
    master_key: str,
) -> Iterator[ProxyInFront]:
    directory = tmp_path_factory.mktemp("proxy")
    suffix = uuid.uuid4().hex[:8]
    topics = Topics(raw=f"proxy.{suffix}.raw")
    ingest, ingest_url = ingest_process(
        directory, database_url, kafka_bootstrap, master_key, POSCAL_TOPIC_RAW=topics.raw
    )
    with ingest:
        wait_until_ready(ingest, ingest_url)
        with ProxyInFront(proxy_values(urlsplit(ingest_url).netloc), directory) as nginx:
            yield nginx


def test_nginx_accepts_the_rendered_configuration(tmp_path: Path) -> None:
    checked = ProxyInFront(proxy_values("127.0.0.1:8080"), tmp_path).check()
    assert checked.returncode == 0, checked.stderr


def test_the_compose_file_sets_every_variable_of_the_template() -> None:
    compose = COMPOSE.read_text()
    unset = {name for name in template_variables() if not re.search(rf"^\s+{name}:", compose, re.M)}
    assert unset == set()


def test_webhooks_and_probes_reach_ingest_and_nothing_else_is_exposed(
    proxy: ProxyInFront,
) -> None:
    with httpx.Client(base_url=proxy.url, timeout=10, verify=proxy.client_context()) as client:
        assert client.get("/healthz").json() == {"status": "ok"}
        assert client.get("/readyz").json() == {"status": "ready"}
        refused = client.post(
            f"/v1/webhooks/mt5/{uuid.uuid4()}",
            content=b"{}",
            headers={"content-type": "application/json"},
        )
        assert (refused.status_code, refused.json()["error"]) == (401, "unauthorized")
        for internal in ("/metrics", "/openapi.json"):
            assert client.get(internal).status_code == 404


def test_a_client_that_never_finishes_its_headers_is_cut_off(proxy: ProxyInFront) -> None:
    with (
        socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as raw,
        proxy.client_context().wrap_socket(raw, server_hostname="127.0.0.1") as sock,
    ):
        sock.sendall(b"POST /v1/webhooks/mt5/x HTTP/1.1\r\nHost: ingest\r\n")  # and no more
        try:
            while sock.recv(4096):
                pass
        except TimeoutError:
            pytest.fail("the connection was still open 10 s later (1 s header timeout)")
        except (ConnectionResetError, ssl.SSLEOFError):
            pass
