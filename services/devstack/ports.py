"""Local server processes: free ports, waiting until they listen, stopping them."""

from __future__ import annotations

import contextlib
import ctypes
import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from types import TracebackType
from typing import Self

_PR_SET_PDEATHSIG = 1


# Ports handed out are taken from this range when set ("20000-23999"): below the kernel's
# ephemeral range, so no outgoing connection's local port takes one between its choice and the
# bind, and apart from other processes' ranges (the test suite gives each worker its own).
FREE_PORT_RANGE = "POSCAL_FREE_PORT_RANGE"
_handed_out: set[int] = set()


def free_port() -> int:
    """A port nothing listens on now; never the same one twice in a process."""
    ports = os.environ.get(FREE_PORT_RANGE)
    if not ports:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port: int = sock.getsockname()[1]
            return port
    first, last = (int(bound) for bound in ports.split("-"))
    candidates = list(range(first, last + 1))
    start = secrets.randbelow(len(candidates))
    for candidate in candidates[start:] + candidates[:start]:
        if candidate not in _handed_out and port_is_free(candidate):
            _handed_out.add(candidate)
            return candidate
    raise PortInUse(f"no free port left in {FREE_PORT_RANGE}={ports}")


class PortInUse(Exception):
    """A port the stack was told to use is taken."""


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def wait_for_port(
    port: int, process: subprocess.Popen[bytes], what: str, timeout: float = 30.0
) -> None:
    """Block until 127.0.0.1:port accepts a connection; fail early if the process died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with code {process.returncode} before it was ready")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"{what} did not accept connections on port {port} within {timeout}s")


def stop_process(
    process: subprocess.Popen[bytes], signal_number: int, timeout: float = 15.0
) -> None:
    """Signal a child, wait for it, and kill it if it does not go in time."""
    if process.poll() is not None:
        return
    process.send_signal(signal_number)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def dies_with_parent(signal_number: int) -> Callable[[], None] | None:
    """A `preexec_fn` asking Linux to signal the child when this process dies, even by SIGKILL.

    Stops a killed `poscal-sync dev` or test run from orphaning its Postgres, broker and services.
    Runs after `user=` has switched users, so the setting survives the switch. Elsewhere: None.
    """
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    parent = os.getpid()

    def arrange() -> None:
        prctl(_PR_SET_PDEATHSIG, signal_number)
        if os.getppid() != parent:  # the parent died before the request took effect
            os.kill(os.getpid(), signal_number)

    return arrange


class LocalServer:
    """A server process this program starts and must stop: `with Server() as s:` does both."""

    def start(self) -> Self:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        with contextlib.suppress(Exception):
            self.stop()
