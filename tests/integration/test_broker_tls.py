"""Broker calls refuse anything below TLS 1.2: the client every service makes for brokers,
MetaApi and a JWKS (services/shared/outbound_http.py) against local HTTPS servers speaking
chosen TLS versions."""

from __future__ import annotations

import ssl
from pathlib import Path

import httpx
import pytest

from services.shared.outbound_http import outbound_http_client
from tests.support.tls import HttpsServer, TestCertificates

pytestmark = pytest.mark.integration

TLS_1_1 = ssl.TLSVersion.TLSv1_1
TLS_1_2 = ssl.TLSVersion.TLSv1_2


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> TestCertificates:
    return TestCertificates.issue(Path(tmp_path_factory.mktemp("tls")))


async def test_a_broker_speaking_at_most_tls_1_1_is_refused(
    certificates: TestCertificates,
) -> None:
    with HttpsServer(certificates.server_context(maximum=TLS_1_1)) as broker:
        # The server does answer a client that accepts TLS 1.1: the refusal below is ours.
        async with httpx.AsyncClient(verify=certificates.client_context(maximum=TLS_1_1)) as old:
            assert (await old.get(broker.url)).json() == {"ok": True}
        async with outbound_http_client(5.0, ca_file=str(certificates.ca)) as http:
            with pytest.raises(httpx.ConnectError, match=r"PROTOCOL_VERSION|UNSUPPORTED_PROTOCOL"):
                await http.get(broker.url)


async def test_a_broker_speaking_tls_1_2_is_accepted(certificates: TestCertificates) -> None:
    with HttpsServer(certificates.server_context(minimum=TLS_1_2, maximum=TLS_1_2)) as broker:
        async with outbound_http_client(5.0, ca_file=str(certificates.ca)) as http:
            answer = await http.get(broker.url)
            tls = answer.extensions["network_stream"].get_extra_info("ssl_object")
            assert (answer.json(), tls.version()) == ({"ok": True}, "TLSv1.2")


async def test_a_certificate_no_trusted_authority_issued_is_refused(
    certificates: TestCertificates,
) -> None:
    with HttpsServer(certificates.server_context(minimum=TLS_1_2)) as broker:
        async with outbound_http_client(5.0) as http:
            with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
                await http.get(broker.url)
