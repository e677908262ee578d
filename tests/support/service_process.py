"""One real service process (`python -m services.<name>`), its JSON log in a file, and ways to
wait for what it says: `with ServiceProcess("writer", env, tmp_path) as writer:`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Self

import httpx

from services.devstack.ports import LocalServer, dies_with_parent, free_port

# What the services would otherwise read from the test runner's own environment.
_NOT_INHERITED = ("DATABASE_URL", "KAFKA_BOOTSTRAP_SERVERS", "POSCAL_MASTER_KEY")


class ServiceProcess(LocalServer):
    def __init__(self, service: str, env: dict[str, str], directory: Path) -> None:
        self.service = service
        self.log_path = directory / f"{service}.log"
        self.ready_file = directory / f"{service}.ready"
        self._env = {k: v for k, v in os.environ.items() if k not in _NOT_INHERITED} | {
            "PYTHONUNBUFFERED": "1",
            "POSCAL_LOG_FORMAT": "json",
            "POSCAL_READY_FILE": str(self.ready_file),
            # Tests wait for what a dependency's arrival changes, not for a long backoff.
            "POSCAL_CONNECT_RETRY_CAP_SECONDS": "0.5",
            **env,
        }
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self) -> Self:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", f"services.{self.service}"],
                env=self._env,
                stdout=log,
                stderr=log,
                start_new_session=True,
                preexec_fn=dies_with_parent(signal.SIGKILL),
            )
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def terminate(self, timeout: float = 30) -> int:
        """SIGTERM, then its exit status once it has exited (a hang fails the test)."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs."""
        assert self.process is not None
        self.process.kill()
        self.process.wait()

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_events(self) -> Iterator[dict[str, Any]]:
        for line in self.log_text().splitlines():
            if line.startswith("{"):
                try:
                    yield json.loads(line)
                except ValueError:
                    continue

    def wait_for(self, condition: Callable[[], bool], what: str, timeout: float = 60) -> None:
        """Until `condition()` holds; fails at once if the process exits meanwhile."""
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while not condition():
            if self.process.poll() is not None:
                raise AssertionError(
                    f"{self.service} exited ({self.process.returncode}) before {what}:\n"
                    + self.log_text()[-4000:]
                )
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{self.service}: no {what} in {timeout}s:\n" + self.log_text()[-4000:]
                )
            time.sleep(0.05)

    def wait_for_log(self, event: str, timeout: float = 60, **fields: Any) -> dict[str, Any]:
        """The first log event named `event` whose fields include `fields`."""
        found: list[dict[str, Any]] = []

        def logged() -> bool:
            found[:] = [
                e
                for e in self.log_events()
                if e.get("event") == event and all(e.get(k) == v for k, v in fields.items())
            ][:1]
            return bool(found)

        self.wait_for(logged, f"log {event!r} {fields}", timeout)
        return found[0]


def ingest_process(
    directory: Path, database_url: str, bootstrap: str, master_key: str, **env: str
) -> tuple[ServiceProcess, str]:
    """A real ingest process on a free port (not started yet), and its URL."""
    port = free_port()
    service = ServiceProcess(
        "ingest",
        {
            "DATABASE_URL": database_url,
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "POSCAL_MASTER_KEY": master_key,
            "POSCAL_INGEST_PORT": str(port),
            **env,
        },
        directory,
    )
    return service, f"http://127.0.0.1:{port}"


def api_process(directory: Path, database_url: str, **env: str) -> tuple[ServiceProcess, str]:
    """A real app API process on a free port (not started yet), and its URL."""
    port = free_port()
    service = ServiceProcess(
        "api", {"DATABASE_URL": database_url, "POSCAL_API_PORT": str(port), **env}, directory
    )
    return service, f"http://127.0.0.1:{port}"


def wait_until_ready(service: ServiceProcess, url: str) -> None:
    def ready() -> bool:
        try:
            return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    service.wait_for(ready, "/readyz 200")
