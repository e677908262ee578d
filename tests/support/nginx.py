"""The proxy of infra/nginx/ as a local nginx process (Debian's `nginx` package), rendered from
its templates the way the nginx image renders them, TLS with a certificate of a test CA:
`with ProxyInFront(values, tmp_path) as proxy:`.
"""

from __future__ import annotations

import re
import shutil
import signal
import ssl
import subprocess
from pathlib import Path
from typing import Self

from services.devstack.ports import LocalServer, dies_with_parent, free_port, wait_for_port
from tests.support.tls import TestCertificates

# The nginx image renders every /etc/nginx/templates/*.template into conf.d/, all included.
TEMPLATES = sorted((Path(__file__).resolve().parents[2] / "infra" / "nginx").glob("*.template"))
_VARIABLE = re.compile(r"\$\{([A-Z_]+)\}")
# What ProxyInFront fills in itself: where it listens and its certificate.
OWN_VARIABLES = {
    "PROXY_LISTEN",
    "API_PROXY_LISTEN",
    "PROXY_TLS_CERTIFICATE",
    "PROXY_TLS_CERTIFICATE_KEY",
}


def template_variables() -> set[str]:
    return {name for template in TEMPLATES for name in _VARIABLE.findall(template.read_text())}


def render(values: dict[str, str]) -> dict[str, str]:
    """envsubst's rendering of each template, by the name it gets in conf.d/: each ${NAME}
    replaced, nginx's own $variables untouched."""
    missing = template_variables() - set(values)
    if missing:
        raise KeyError(f"no value for {sorted(missing)}")
    return {
        template.name.removesuffix(".template"): _VARIABLE.sub(
            lambda match: values[match.group(1)], template.read_text()
        )
        for template in TEMPLATES
    }


def nginx_binary() -> str:
    found = shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if Path(p).exists()), None
    )
    if found is None:
        raise FileNotFoundError("nginx not found: install Debian's nginx (apt-get install nginx)")
    return found


class ProxyInFront(LocalServer):
    def __init__(self, values: dict[str, str], directory: Path) -> None:
        """`values` for every template variable but OWN_VARIABLES (free ports are taken, and a
        certificate for 127.0.0.1 issued by a CA of its own)."""
        self.port = free_port()
        self.api_port = free_port()
        self.certificates = TestCertificates.issue(directory)
        self._values = values | {
            "PROXY_LISTEN": f"127.0.0.1:{self.port}",
            "API_PROXY_LISTEN": f"127.0.0.1:{self.api_port}",
            "PROXY_TLS_CERTIFICATE": str(self.certificates.certificate),
            "PROXY_TLS_CERTIFICATE_KEY": str(self.certificates.key),
        }
        self._directory = directory
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """Ingest, through the proxy."""
        return f"https://127.0.0.1:{self.port}"

    @property
    def api_url(self) -> str:
        """The app API, through the proxy."""
        return f"https://127.0.0.1:{self.api_port}"

    def client_context(self) -> ssl.SSLContext:
        """A client trusting the proxy's certificate (and nothing else)."""
        return ssl.create_default_context(cafile=str(self.certificates.ca))

    @property
    def config(self) -> Path:
        return self._directory / "nginx.conf"

    def write_config(self) -> Path:
        """A main configuration around the rendered template, everything inside `directory`."""
        root = self._directory
        for name, text in render(self._values).items():
            (root / name).write_text(text)
        temp = {
            kind: root / kind.split("_")[-1]
            for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        }
        for path in temp.values():
            path.mkdir(exist_ok=True)
        self.config.write_text(
            # One process as the current user: no workers switching to an unprivileged user.
            "daemon off;\nmaster_process off;\n"
            f"pid {root / 'nginx.pid'};\nerror_log {root / 'error.log'} info;\n"
            "events { worker_connections 256; }\n"
            "http {\n  access_log off;\n"
            + "".join(f"  {kind}_temp_path {path};\n" for kind, path in temp.items())
            + "".join(f"  include {root / name};\n" for name in render(self._values))
            + "}\n"
        )
        return self.config

    def check(self) -> subprocess.CompletedProcess[str]:
        """`nginx -t` on the configuration."""
        self.write_config()
        return subprocess.run(
            [nginx_binary(), "-t", "-p", str(self._directory), "-c", str(self.config)],
            capture_output=True,
            text=True,
        )

    def start(self) -> Self:
        self.write_config()
        self._process = subprocess.Popen(
            [nginx_binary(), "-p", str(self._directory), "-c", str(self.config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=dies_with_parent(signal.SIGTERM),
        )
        wait_for_port(self.port, self._process, "nginx")
        return self

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._process = None
