"""The proxy of infra/nginx/ as a local nginx process (Debian's `nginx` package), rendered from
its template the way the nginx image renders it: `with ProxyInFront(values, tmp_path) as proxy:`.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
from pathlib import Path
from typing import Self

from services.devstack.ports import LocalServer, dies_with_parent, free_port, wait_for_port

TEMPLATE = Path(__file__).resolve().parents[2] / "infra" / "nginx" / "ingest.conf.template"
_VARIABLE = re.compile(r"\$\{([A-Z_]+)\}")


def template_variables() -> set[str]:
    return set(_VARIABLE.findall(TEMPLATE.read_text()))


def render(values: dict[str, str]) -> str:
    """envsubst's rendering: each ${NAME} replaced, nginx's own $variables untouched."""
    missing = template_variables() - set(values)
    if missing:
        raise KeyError(f"no value for {sorted(missing)}")
    return _VARIABLE.sub(lambda match: values[match.group(1)], TEMPLATE.read_text())


def nginx_binary() -> str:
    found = shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if Path(p).exists()), None
    )
    if found is None:
        raise FileNotFoundError("nginx not found: install Debian's nginx (apt-get install nginx)")
    return found


class ProxyInFront(LocalServer):
    def __init__(self, values: dict[str, str], directory: Path) -> None:
        """`values` for every template variable but PROXY_LISTEN (a free port is taken)."""
        self.port = free_port()
        self._values = values | {"PROXY_LISTEN": f"127.0.0.1:{self.port}"}
        self._directory = directory
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def config(self) -> Path:
        return self._directory / "nginx.conf"

    def write_config(self) -> Path:
        """A main configuration around the rendered template, everything inside `directory`."""
        root = self._directory
        (root / "ingest.conf").write_text(render(self._values))
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
            + f"  include {root / 'ingest.conf'};\n}}\n"
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
