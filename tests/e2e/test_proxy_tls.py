"""TLS at the proxy of infra/nginx/ in front of real ingest and app API processes: TLS 1.2 and
1.3 handshakes succeed, 1.1 and 1.0 are refused by the proxy, and every answer (success,
refusal, nginx's own errors) carries one Strict-Transport-Security header."""

from __future__ import annotations

import socket
import ssl
import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit

import httpx
import pytest

from services.shared.settings import Topics
from tests.e2e.test_ingest_proxy import proxy_values
from tests.support.api import JWT_SECRET
from tests.support.nginx import ProxyInFront
from tests.support.service_process import api_process, ingest_process, wait_until_ready
from tests.support.tls import TestCertificates

pytestmark = pytest.mark.e2e

HSTS = "max-age=63072000; includeSubDomains"
TLS = ssl.TLSVersion


@pytest.fixture(scope="module")
def proxy(
    tmp_path_factory: pytest.TempPathFactory,
    database_url: str,
    kafka_bootstrap: str,
    master_key: str,
) -> Iterator[ProxyInFront]:
    directory = tmp_path_factory.mktemp("tls-proxy")
    topics = Topics(raw=f"tls.{uuid.uuid4().hex[:8]}.raw")
    ingest, ingest_url = ingest_process(
        directory, database_url, kafka_bootstrap, master_key, POSCAL_TOPIC_RAW=topics.raw
    )
    api, api_url = api_process(directory, database_url, POSCAL_API_JWT_SECRET=JWT_SECRET)
    with ingest, api:
        wait_until_ready(ingest, ingest_url)
        wait_until_ready(api, api_url)
        values = proxy_values(urlsplit(ingest_url).netloc, urlsplit(api_url).netloc)
        with ProxyInFront(values, directory) as nginx:
            yield nginx


def handshake(port: int, context: ssl.SSLContext) -> str | None:
    """The TLS version agreed with the proxy on `port`."""
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        return tls.version()


def hsts_headers(answers: dict[str, httpx.Response]) -> dict[str, list[str]]:
    return {what: a.headers.get_list("strict-transport-security") for what, a in answers.items()}


def speaking(proxy: ProxyInFront, version: ssl.TLSVersion) -> ssl.SSLContext:
    return proxy.certificates.client_context(minimum=version, maximum=version)


@pytest.mark.parametrize("version", [TLS.TLSv1_2, TLS.TLSv1_3], ids=["TLSv1.2", "TLSv1.3"])
def test_tls_1_2_and_1_3_handshakes_succeed_on_ingest_and_the_api(
    proxy: ProxyInFront, version: ssl.TLSVersion
) -> None:
    agreed = {handshake(port, speaking(proxy, version)) for port in (proxy.port, proxy.api_port)}
    assert agreed == {version.name.replace("_", ".")}


@pytest.mark.parametrize("version", [TLS.TLSv1_1, TLS.TLSv1], ids=["TLSv1.1", "TLSv1.0"])
def test_tls_1_1_and_1_0_are_refused_by_the_proxy(
    proxy: ProxyInFront, version: ssl.TLSVersion
) -> None:
    for port in (proxy.port, proxy.api_port):
        # The client offers the old version with any cipher (security level 0): the protocol
        # version alert is the proxy's refusal, not this client's.
        with pytest.raises(ssl.SSLError, match="TLSV1_ALERT_PROTOCOL_VERSION"):
            handshake(port, speaking(proxy, version))


def test_every_ingest_answer_carries_hsts(proxy: ProxyInFront) -> None:
    with httpx.Client(base_url=proxy.url, timeout=10, verify=proxy.client_context()) as client:
        answers = {
            "probe": client.get("/healthz"),
            "refused webhook": client.post(
                f"/v1/webhooks/mt5/{uuid.uuid4()}",
                content=b"{}",
                headers={"content-type": "application/json"},
            ),
            "not exposed": client.get("/metrics"),
            "too large for the proxy": client.post(
                f"/v1/webhooks/mt5/{uuid.uuid4()}", content=b"x" * (257 * 1024)
            ),
        }
    assert {what: a.status_code for what, a in answers.items()} == {
        "probe": 200,
        "refused webhook": 401,
        "not exposed": 404,
        "too large for the proxy": 413,
    }
    assert hsts_headers(answers) == {what: [HSTS] for what in answers}


def test_every_api_answer_carries_one_hsts_header(proxy: ProxyInFront) -> None:
    with httpx.Client(base_url=proxy.api_url, timeout=10, verify=proxy.client_context()) as client:
        answers = {
            "probe": client.get("/healthz"),
            "no token": client.get("/v1/connections"),
            "no such route": client.get("/v1/no-such-route"),
            "not exposed": client.get("/metrics"),
            "too large for the proxy": client.post("/v1/connections", content=b"x" * (65 * 1024)),
        }
    assert {what: a.status_code for what, a in answers.items()} == {
        "probe": 200,
        "no token": 401,
        "no such route": 404,
        "not exposed": 404,
        "too large for the proxy": 413,
    }
    # The API's own header (POSCAL_API_HSTS_SECONDS) is replaced, never doubled.
    assert hsts_headers(answers) == {what: [HSTS] for what in answers}


def test_a_certificate_from_another_authority_is_not_trusted(
    proxy: ProxyInFront, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The specs above verify the proxy's certificate: a client trusting another CA fails."""
    stranger = TestCertificates.issue(tmp_path_factory.mktemp("stranger"))
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(proxy.port, stranger.client_context(minimum=TLS.TLSv1_2))
