"""Every HTTP client the services make for the outside (brokers, MetaApi, a JWKS) comes from
services/shared/outbound_http.py, so each refuses TLS below 1.2 and follows no redirect; only
the dev stack, which talks to its own loopback ingest, makes one itself."""

from __future__ import annotations

import ast
import ssl
from pathlib import Path

from services.shared.outbound_http import outbound_http_client, outbound_tls_context

SERVICES_DIR = Path(__file__).resolve().parents[2] / "services"
FACTORY = SERVICES_DIR / "shared" / "outbound_http.py"
LOOPBACK_ONLY = SERVICES_DIR / "devstack"
_CLIENTS = {"Client", "AsyncClient", "create_ssl_context", "SSLContext", "create_default_context"}


def clients_made_outside_the_factory() -> list[str]:
    made = []
    for path in sorted(SERVICES_DIR.rglob("*.py")):
        if path == FACTORY or LOOPBACK_ONLY in path.parents:
            continue
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in _CLIENTS
                and isinstance(node.func.value, ast.Name)
                and node.func.value.id in {"httpx", "ssl"}
            ):
                made.append(f"{path.relative_to(SERVICES_DIR)}:{node.lineno}")
    return made


def test_no_service_makes_an_http_client_or_tls_context_of_its_own() -> None:
    assert clients_made_outside_the_factory() == []


def test_the_outbound_context_verifies_certificates_and_refuses_below_tls_1_2() -> None:
    context = outbound_tls_context()
    assert (context.minimum_version, context.verify_mode, context.check_hostname) == (
        ssl.TLSVersion.TLSv1_2,
        ssl.CERT_REQUIRED,
        True,
    )


async def test_the_outbound_client_follows_no_redirect() -> None:
    async with outbound_http_client(5.0) as http:
        assert http.follow_redirects is False
