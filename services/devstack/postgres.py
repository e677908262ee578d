"""A throwaway PostgreSQL cluster from Debian's server binaries, for the dev stack and tests."""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Mapping
from contextlib import nullcontext
from pathlib import Path

from services.devstack.ports import (
    LocalServer,
    dies_with_parent,
    free_port,
    stop_process,
    wait_for_port,
)

_SEARCH = ("/usr/lib/postgresql/*/bin",)
# A throwaway cluster trades durability for speed; `settings` may ask for more.
_SETTINGS = {
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "200",
    # Commit times, for measuring webhook-to-row latency (bench/).
    "track_commit_timestamp": "on",
}


def find_pg_bin() -> Path:
    """The directory holding initdb and postgres: PG_BIN, PATH, or Debian's versioned dirs."""
    explicit = os.environ.get("PG_BIN")
    if explicit:
        return Path(explicit)
    on_path = shutil.which("initdb")
    if on_path:
        return Path(on_path).parent
    candidates = sorted(
        (p for pattern in _SEARCH for p in Path("/").glob(pattern.lstrip("/"))),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
    )
    for candidate in reversed(candidates):
        if (candidate / "initdb").exists():
            return candidate
    raise FileNotFoundError(
        "PostgreSQL server binaries not found: install Debian's postgresql-15 "
        "(apt-get install postgresql-15) or set PG_BIN"
    )


class EmbeddedPostgres(LocalServer):
    """Start with `start()` (or as a context manager); `dsn` is ready once it returns.

    initdb and postgres refuse to run as root; started as root, they run as the `postgres` OS
    user. The cluster lives in a fresh directory under the system temp dir (reachable by that
    user) and is deleted on stop."""

    def __init__(
        self,
        database: str = "poscal",
        log_path: Path | None = None,
        port: int = 0,
        *,
        settings: Mapping[str, str] | None = None,
        environment: Mapping[str, str] | None = None,
        data_directory: Path | None = None,
    ) -> None:
        """`port` 0: any free one. `settings` are server settings over the defaults above,
        `environment` is added to the server's (what its archive or restore command reads).
        `data_directory`: an existing cluster to run (a restored backup, owned by the server's
        user, its database already there) instead of a new one; it is left in place at stop."""
        self.database = database
        self.port = 0
        self._wanted_port = port
        self._log_path = log_path
        self._settings = _SETTINGS | dict(settings or {})
        self._environment = dict(environment or {})
        self._existing_data = data_directory
        self._root: Path | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._run_as: pwd.struct_passwd | None = (
            pwd.getpwnam("postgres") if os.geteuid() == 0 else None
        )

    @property
    def user(self) -> str:
        return self._run_as.pw_name if self._run_as else pwd.getpwuid(os.geteuid()).pw_name

    @property
    def dsn(self) -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{self.database}"

    @property
    def data_directory(self) -> Path:
        if self._existing_data is not None:
            return self._existing_data
        if self._root is None:
            raise RuntimeError("the cluster is not started")
        return self._root / "data"

    @property
    def socket_directory(self) -> Path:
        if self._root is None:
            raise RuntimeError("the cluster is not started")
        return self._root

    def _owner(self) -> tuple[int | None, int | None, list[int] | None]:
        """user, group and extra_groups for subprocess: the postgres user when we are root."""
        if self._run_as is None:
            return None, None, None
        return self._run_as.pw_uid, self._run_as.pw_gid, []

    def _run(self, args: list[str]) -> None:
        user, group, extra = self._owner()
        subprocess.run(
            args, check=True, capture_output=True, user=user, group=group, extra_groups=extra
        )

    def start(self) -> EmbeddedPostgres:
        bin_dir = find_pg_bin()
        self._root = Path(tempfile.mkdtemp(prefix="poscal-pg-"))
        self._root.chmod(0o755)
        if self._run_as is not None:
            os.chown(self._root, self._run_as.pw_uid, self._run_as.pw_gid)
        data = self.data_directory
        if self._existing_data is None:
            self._run(
                [
                    str(bin_dir / "initdb"),
                    "-D",
                    str(data),
                    "-A",
                    "trust",
                    "-U",
                    self.user,
                    "-E",
                    "UTF8",
                    "--locale=C.UTF-8",
                    "--no-sync",
                ]
            )
        self.port = self._wanted_port or free_port()
        settings = self._settings | {
            "listen_addresses": "127.0.0.1",
            "unix_socket_directories": str(self._root),
        }
        user, group, extra = self._owner()
        sink = self._log_path.open("ab") if self._log_path else nullcontext(subprocess.DEVNULL)
        with sink as log:
            self._process = subprocess.Popen(
                [str(bin_dir / "postgres"), "-D", str(data), "-p", str(self.port)]
                + [arg for name, value in settings.items() for arg in ("-c", f"{name}={value}")],
                stdout=log,
                stderr=log,
                env=os.environ | self._environment,
                start_new_session=True,
                # SIGQUIT: immediate shutdown; its backends exit when the postmaster does.
                preexec_fn=dies_with_parent(signal.SIGQUIT),
                user=user,
                group=group,
                extra_groups=extra,
            )
        wait_for_port(self.port, self._process, "postgres")
        if self._existing_data is None:
            self._create_database(bin_dir)
        return self

    def _create_database(self, bin_dir: Path) -> None:
        psql = bin_dir / "psql" if (bin_dir / "psql").exists() else shutil.which("psql")
        if psql is None:
            raise FileNotFoundError("psql not found: install postgresql-client-15")
        deadline = time.monotonic() + 30
        while True:
            created = subprocess.run(
                [
                    str(psql),
                    "-h",
                    "127.0.0.1",
                    "-p",
                    str(self.port),
                    "-U",
                    self.user,
                    "-d",
                    "postgres",
                    "-v",
                    "ON_ERROR_STOP=1",
                    "-qc",
                    f'CREATE DATABASE "{self.database}"',
                ],
                capture_output=True,
            )
            if created.returncode == 0:
                return
            # The port opens a moment before the server accepts sessions.
            if b"starting up" not in created.stderr or time.monotonic() > deadline:
                raise RuntimeError(f"could not create database: {created.stderr.decode()}")
            time.sleep(0.1)

    def stop(self) -> None:
        if self._process is not None:
            # SIGINT is postgres's "fast shutdown": roll back sessions, stop at once.
            stop_process(self._process, signal.SIGINT)
            self._process = None
        if self._root is not None:
            shutil.rmtree(self._root, ignore_errors=True)
            self._root = None
