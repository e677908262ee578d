"""The one way to make an HTTP client that leaves the system (brokers, MetaApi, a JWKS): TLS 1.2
or newer, certificates verified, redirects never followed (they could carry a token away)."""

from __future__ import annotations

import ssl

import httpx

MINIMUM_TLS = ssl.TLSVersion.TLSv1_2


def outbound_tls_context(ca_file: str | None = None) -> ssl.SSLContext:
    """httpx's verifying context (certifi's roots, or SSL_CERT_FILE / SSL_CERT_DIR when set), or
    one trusting only `ca_file`; never below TLS 1.2, whatever Python's defaults become."""
    if ca_file is None:
        context = httpx.create_ssl_context()
    else:
        context = ssl.create_default_context(cafile=ca_file)
    context.minimum_version = MINIMUM_TLS
    return context


def outbound_http_client(timeout: float, *, ca_file: str | None = None) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        timeout=timeout, follow_redirects=False, verify=outbound_tls_context(ca_file)
    )
