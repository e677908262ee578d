"""The real ingest service as its own process (`python -m services.ingest`), as in production:
started on a free port, ready once `/readyz` says so, and stoppable the hard way (SIGKILL)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Self

import httpx

from services.devstack.ports import LocalServer, dies_with_parent, free_port, stop_process


class IngestProcess(LocalServer):
    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self._env = env
        self._log_path = log_path
        self._process: subprocess.Popen[bytes] | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, ready_within: float = 60.0) -> Self:
        self.port = free_port()
        env = {**os.environ, **self._env, "POSCAL_INGEST_PORT": str(self.port)}
        with self._log_path.open("ab") as log:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "services.ingest"],
                env=env,
                stdout=log,
                stderr=log,
                start_new_session=True,
                preexec_fn=dies_with_parent(signal.SIGTERM),
            )
        deadline = time.monotonic() + ready_within
        while not self._ready():
            if self._process.poll() is not None:
                raise RuntimeError(f"ingest exited with {self._process.returncode}; see log")
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"ingest not ready within {ready_within}s; see {self._log_path}")
            time.sleep(0.05)
        return self

    def kill(self) -> None:
        """SIGKILL, as a crash or the OOM killer would: nothing of its own shutdown runs."""
        assert self._process is not None
        self._process.kill()
        self._process.wait(10)

    def stop(self) -> None:
        if self._process is not None:
            stop_process(self._process, signal.SIGTERM, timeout=15)
            self._process = None

    def _ready(self) -> bool:
        with contextlib.suppress(httpx.HTTPError):
            return httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200
        return False
