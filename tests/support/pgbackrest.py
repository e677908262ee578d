"""pgBackRest (Debian's `pgbackrest` package) with the configuration of infra/pgbackrest/, its
repository, logs, locks and restored clusters in one temporary directory, removed at exit:
`with BackupRepository(passphrase) as backups:`.

It runs as the `postgres` OS user when the tests run as root, as the Postgres it backs up does
(pgBackRest refuses a cluster owned by another user).
"""

from __future__ import annotations

import configparser
import os
import pwd
import re
import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Self

INFRA = Path(__file__).resolve().parents[2] / "infra" / "pgbackrest"
SAMPLE_CONFIG = INFRA / "pgbackrest.conf"
POSTGRES_SETTINGS = INFRA / "postgresql.archiving.conf"
STANZA = "poscal"
_SETTING = re.compile(r"^\s*([a-z_]+)\s*=\s*(?:'((?:[^']|'')*)'|(\S+))")


def archiving_settings() -> dict[str, str]:
    """The Postgres settings of infra/pgbackrest/postgresql.archiving.conf (those not commented
    out), as `-c name=value` takes them."""
    settings = {}
    for line in POSTGRES_SETTINGS.read_text().splitlines():
        if matched := _SETTING.match(line):
            name, quoted, bare = matched.groups()
            settings[name] = quoted.replace("''", "'") if quoted is not None else bare
    return settings


def pgbackrest_binary() -> str:
    found = shutil.which("pgbackrest")
    if found is None:
        raise FileNotFoundError("pgbackrest not found: install Debian's pgbackrest")
    return found


class BackupRepository:
    """The sample configuration with this machine's paths (`configure`): the repository, logs and
    locks in a new temporary directory, the cluster the one `configure` names.

    The passphrase is written to a configuration include of mode 0600 (as the secret store's
    file would be), never on a command line."""

    def __init__(self, passphrase: str) -> None:
        self._run_as = pwd.getpwnam("postgres") if os.geteuid() == 0 else None
        self.directory = Path(tempfile.mkdtemp(prefix="poscal-pgbackrest-"))
        self.repository = self.directory / "repo"
        self.logs = self.directory / "log"
        self._includes = self.directory / "conf.d"
        self._no_includes = self.directory / "no-conf.d"
        self._config = self.directory / "pgbackrest.conf"
        self._own(self.directory)
        for path in (self.repository, self.logs, self.directory / "lock"):
            path.mkdir(mode=0o700)
            self._own(path)
        for path in (self._includes, self._no_includes):
            path.mkdir(mode=0o700)
            self._own(path)
        secret = self._includes / "cipher.conf"
        secret.touch(mode=0o600)
        secret.write_text(f"[global]\nrepo1-cipher-pass={passphrase}\n")
        self._own(secret)

    def _own(self, path: Path) -> None:
        if self._run_as is not None:
            os.chown(path, self._run_as.pw_uid, self._run_as.pw_gid)

    def configure(
        self, *, data_directory: Path, socket_directory: Path, port: int, user: str
    ) -> None:
        sample = configparser.ConfigParser(interpolation=None)
        sample.optionxform = str  # type: ignore[assignment, method-assign]
        sample.read_string(SAMPLE_CONFIG.read_text())
        sample["global"].update(
            {
                "repo1-path": str(self.repository),
                "log-path": str(self.logs),
                "lock-path": str(self.directory / "lock"),
                # An asynchronous pusher is a process of its own that outlives archive_command:
                # here each segment is pushed before archive_command returns.
                "archive-async": "n",
            }
        )
        del sample["global"]["spool-path"]
        sample[STANZA].update(
            {
                "pg1-path": str(data_directory),
                "pg1-socket-path": str(socket_directory),
                "pg1-port": str(port),
                "pg1-user": user,
            }
        )
        with self._config.open("w") as file:
            sample.write(file, space_around_delimiters=False)
        self._own(self._config)

    def environment(self, *, with_passphrase: bool = True) -> dict[str, str]:
        """What pgBackRest (and a Postgres whose archive or restore command runs it) is given:
        where its configuration is, and the include holding the passphrase unless told not."""
        return {
            "PGBACKREST_CONFIG": str(self._config),
            "PGBACKREST_CONFIG_INCLUDE_PATH": str(
                self._includes if with_passphrase else self._no_includes
            ),
        }

    def run(
        self, *args: str, environment: Mapping[str, str] | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """`pgbackrest --stanza=poscal ARGS` as the cluster's user."""
        user, group = (self._run_as.pw_uid, self._run_as.pw_gid) if self._run_as else (None, None)
        ran = subprocess.run(
            [pgbackrest_binary(), f"--stanza={STANZA}", *args],
            capture_output=True,
            text=True,
            # What a wrong passphrase decrypts to is quoted in the error: bytes, not UTF-8.
            errors="replace",
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
            | (dict(environment) if environment is not None else self.environment()),
            user=user,
            group=group,
            extra_groups=[] if self._run_as else None,
            cwd=self.directory,
            timeout=60,
        )
        if check and ran.returncode != 0:
            raise RuntimeError(f"pgbackrest {' '.join(args)} failed: {ran.stdout}{ran.stderr}")
        return ran

    def new_data_directory(self, name: str) -> Path:
        """An empty directory to restore a cluster into, as Postgres wants it (0700, its user's)."""
        path = self.directory / name
        path.mkdir(mode=0o700)
        self._own(path)
        return path

    def remove(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.remove()
