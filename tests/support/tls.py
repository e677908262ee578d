"""TLS for tests: a throwaway certificate authority and a loopback server certificate made with
`cryptography` (`TestCertificates.issue(directory)`), client contexts for chosen TLS versions,
and a minimal HTTPS server speaking only the versions its context allows."""

from __future__ import annotations

import ipaddress
import ssl
import threading
import warnings
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Self

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from services.devstack.ports import LocalServer

# Lets this process's OpenSSL offer or accept TLS 1.0/1.1 (OpenSSL 3's default security level
# forbids them), so that a refusal seen in a test is the other side's.
ANY_CIPHER = "DEFAULT:@SECLEVEL=0"


def _speaking(
    context: ssl.SSLContext, minimum: ssl.TLSVersion, maximum: ssl.TLSVersion
) -> ssl.SSLContext:
    """`context` set to exactly these versions and any cipher."""
    context.set_ciphers(ANY_CIPHER)
    # Python deprecates TLS 1.0 and 1.1: these contexts exist to show them refused.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        context.minimum_version = minimum
        context.maximum_version = maximum
    return context


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


@dataclass(frozen=True)
class TestCertificates:
    """A CA (`ca`) and a certificate it issued for 127.0.0.1 and localhost (`certificate`,
    its key `key`), as PEM files."""

    __test__ = False  # a builder, not a test class

    ca: Path
    certificate: Path
    key: Path

    @classmethod
    def issue(cls, directory: Path) -> TestCertificates:
        now = datetime.now(UTC)
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca = (
            x509.CertificateBuilder()
            .subject_name(_name("PosCal test CA"))
            .issuer_name(_name("PosCal test CA"))
            .public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(ca_key, hashes.SHA256())
        )
        key = ec.generate_private_key(ec.SECP256R1())
        certificate = (
            x509.CertificateBuilder()
            .subject_name(_name("127.0.0.1"))
            .issuer_name(ca.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(days=1))
            .add_extension(
                x509.SubjectAlternativeName(
                    [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
                ),
                critical=False,
            )
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
            )
            .sign(ca_key, hashes.SHA256())
        )
        issued = cls(directory / "ca.pem", directory / "server.pem", directory / "server.key")
        issued.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
        issued.certificate.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
        issued.key.touch(mode=0o600)
        issued.key.write_bytes(_pem(key))
        return issued

    def client_context(
        self,
        minimum: ssl.TLSVersion = ssl.TLSVersion.MINIMUM_SUPPORTED,
        maximum: ssl.TLSVersion = ssl.TLSVersion.MAXIMUM_SUPPORTED,
    ) -> ssl.SSLContext:
        """A client trusting this CA only, offering exactly the versions from `minimum` to
        `maximum` (any cipher, so the client never refuses an old version itself)."""
        return _speaking(ssl.create_default_context(cafile=str(self.ca)), minimum, maximum)

    def server_context(
        self,
        minimum: ssl.TLSVersion = ssl.TLSVersion.MINIMUM_SUPPORTED,
        maximum: ssl.TLSVersion = ssl.TLSVersion.MAXIMUM_SUPPORTED,
    ) -> ssl.SSLContext:
        """A server presenting the certificate, speaking exactly `minimum` to `maximum`."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.certificate, self.key)
        return _speaking(context, minimum, maximum)


class _Answer(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b'{"ok": true}'
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


class HttpsServer(LocalServer):
    """Answers every GET with 200 `{"ok": true}` over TLS as `context` allows, on a loopback
    port: `with HttpsServer(context) as server: server.url`."""

    def __init__(self, context: ssl.SSLContext) -> None:
        self._context = context
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("the server is not started")
        return f"https://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> Self:
        server = ThreadingHTTPServer(("127.0.0.1", 0), _Answer)
        # A handshake the context refuses fails that one accept; the server goes on.
        server.socket = self._context.wrap_socket(server.socket, server_side=True)
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name="https", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._server = self._thread = None
