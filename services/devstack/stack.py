"""`poscal-sync dev`: Postgres, the broker, migrations, topics and the five services, together."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from services.devstack.broker import EmbeddedBroker
from services.devstack.ports import PortInUse, dies_with_parent, free_port, port_is_free
from services.devstack.postgres import EmbeddedPostgres
from services.shared.crypto import new_master_key_base64
from services.shared.kafka import TopicSpec, ensure_topics
from services.shared.migrations import apply_migrations
from services.shared.settings import ServiceSettings, Topics

SERVICES = ("ingest", "poller", "normalizer", "writer", "api")
# Services that report readiness through a ready file (ingest and the API answer /readyz).
READY_FILES = ("poller", "normalizer", "writer")
# What verifies the dev API's access tokens (`poscal-sync api token` signs with it): only the
# API process is given it.
API_JWT_SECRET = "POSCAL_API_JWT_SECRET"  # noqa: S105 - a variable name, not a secret
# Services whose Prometheus metrics are on a port of their own, `POSCAL_{NAME}_METRICS_PORT`
# (ingest serves /metrics on its own port).
METRICS_PORT_SERVICES = ("poller", "normalizer", "writer", "api")


# How consumers talk to the embedded broker. It answers a group join after half the session
# timeout. It answers a fetch once data arrives (the wait is only the idle poll's period, so a
# short one burns CPU while idle: 20 ms cost each consumer ~5% of a core), mostly within a few
# ms, but now and then only at the end of the wait: 100 ms bounds that delay and keeps idle
# consumers near 1%.
EMBEDDED_BROKER_CONSUMER_ENV = {
    "POSCAL_KAFKA_SESSION_TIMEOUT_MS": "2000",
    "POSCAL_KAFKA_FETCH_MAX_WAIT_MS": "100",
}


# The share of traces the dev stack records to its span files: each trace kept or dropped whole
# where it starts (ingest's request, the poller's sync), every later service following the
# decision its parent's context carries. Per-record spans cost the consumers a third of their
# CPU under a backlog (bench.pipeline_drain); a tenth of the traces still shows every path.
# The SDK's own settings, so an OTEL_TRACES_SAMPLER in the environment decides instead (the
# test suite pins parentbased_always_on: every trace recorded).
DEV_TRACE_SAMPLE_RATIO = 0.1
DEV_TRACE_SAMPLING = {
    "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
    "OTEL_TRACES_SAMPLER_ARG": str(DEV_TRACE_SAMPLE_RATIO),
}


def trace_sampling(environ: Mapping[str, str]) -> dict[str, str]:
    """The dev stack's sampler settings, unless the environment names a sampler of its own."""
    return {} if environ.get("OTEL_TRACES_SAMPLER") else dict(DEV_TRACE_SAMPLING)


GRACE_SETTING = "POSCAL_SHUTDOWN_GRACE_SECONDS"
# How long past its grace a cancelled service may take to close its connections and exit.
STOP_MARGIN_SECONDS = 5.0


def pipeline_topics(topics: Topics, partitions: int = 6) -> list[TopicSpec]:
    return [
        TopicSpec(topics.raw, partitions),
        TopicSpec(topics.canonical, partitions),
        TopicSpec(topics.dead_letter, partitions),
    ]


@dataclass
class DevStack:
    """Each service runs as its own process, as in production, with its logs and spans in the
    state directory. Stopping the stack stops every process it started."""

    state_dir: Path
    port: int = 8080
    # The app API's port (0: any free one).
    api_port: int = 8090
    # Either may hold a secret (a password in the URL, the key-encryption key): never in a repr.
    database_url: str | None = field(default=None, repr=False)
    kafka_bootstrap_servers: str | None = None
    master_key: str | None = field(default=None, repr=False)
    api_jwt_secret: str | None = field(default=None, repr=False)
    topics: Topics = field(default_factory=Topics)
    extra_env: dict[str, str] = field(default_factory=dict)
    # Each service's metrics port (free ones, chosen at start).
    metrics_ports: dict[str, int] = field(default_factory=dict)
    _postgres: EmbeddedPostgres | None = None
    _broker: EmbeddedBroker | None = None
    _services: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def shutdown_grace_seconds(self) -> float:
        """The services' grace after SIGTERM (POSCAL_SHUTDOWN_GRACE_SECONDS, as they read it)."""
        named = self.extra_env.get(GRACE_SETTING) or os.environ.get(GRACE_SETTING)
        return (
            float(named)
            if named
            else ServiceSettings.model_fields["shutdown_grace_seconds"].default
        )

    @property
    def logs(self) -> Path:
        return self.state_dir / "logs"

    @property
    def traces(self) -> Path:
        return self.state_dir / "traces"

    @property
    def ingest_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def metrics_url(self, name: str) -> str:
        """Where the service `name` serves its Prometheus metrics."""
        if name == "ingest":
            return f"{self.ingest_url}/metrics"
        return f"http://127.0.0.1:{self.metrics_ports[name]}/metrics"

    def env(self) -> dict[str, str]:
        assert self.database_url and self.kafka_bootstrap_servers and self.master_key
        assert self.api_jwt_secret
        return {
            "DATABASE_URL": self.database_url,
            "KAFKA_BOOTSTRAP_SERVERS": self.kafka_bootstrap_servers,
            "INGEST_URL": self.ingest_url,
            "API_URL": self.api_url,
            "POSCAL_MASTER_KEY": self.master_key,
            API_JWT_SECRET: self.api_jwt_secret,
        }

    def start(self) -> DevStack:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(exist_ok=True)
        shutil.rmtree(self.traces, ignore_errors=True)
        self.traces.mkdir()
        shutil.rmtree(self.state_dir / "run", ignore_errors=True)
        (self.state_dir / "run").mkdir()
        try:
            self._start_infrastructure()
            asyncio.run(self._prepare())
            self._write_env_file()
            for name in SERVICES:
                self._start_service(name)
            self._wait_until_ready()
            self._wait_for_consumers()
        except BaseException:
            self.stop()
            raise
        return self

    def _start_infrastructure(self) -> None:
        if self.port == 0:
            self.port = free_port()
        elif not port_is_free(self.port):
            raise PortInUse(f"port {self.port} is in use: stop what holds it, or pass --port")
        if self.api_port == 0:
            self.api_port = free_port()
        elif not port_is_free(self.api_port):
            raise PortInUse(
                f"port {self.api_port} is in use: stop what holds it, or pass --api-port"
            )
        for name in METRICS_PORT_SERVICES:
            self.metrics_ports.setdefault(name, free_port())
        if self.database_url is None:
            self._postgres = EmbeddedPostgres(log_path=self.logs / "postgres.log").start()
            self.database_url = self._postgres.dsn
        if self.kafka_bootstrap_servers is None:
            self._broker = EmbeddedBroker(log_path=self.logs / "broker.log").start()
            self.kafka_bootstrap_servers = self._broker.bootstrap_servers
        if self.master_key is None:
            self.master_key = _stored_master_key(self.state_dir)
        if self.api_jwt_secret is None:
            self.api_jwt_secret = _stored_api_jwt_secret(self.state_dir)

    async def _prepare(self) -> None:
        assert self.database_url and self.kafka_bootstrap_servers
        await apply_migrations(self.database_url)
        await ensure_topics(self.kafka_bootstrap_servers, pipeline_topics(self.topics))

    def _write_env_file(self) -> None:
        path = self.state_dir / "stack.env"
        path.touch(mode=0o600)
        path.chmod(0o600)
        path.write_text("".join(f"{k}={v}\n" for k, v in self.env().items()))

    def _start_service(self, name: str) -> None:
        stack_env = self.env()
        if name != "api":
            del stack_env[API_JWT_SECRET]
        if name in self.metrics_ports:
            stack_env[f"POSCAL_{name.upper()}_METRICS_PORT"] = str(self.metrics_ports[name])
        env = {
            **trace_sampling({**os.environ, **self.extra_env}),
            **os.environ,
            **stack_env,
            "POSCAL_INGEST_PORT": str(self.port),
            "POSCAL_API_HOST": "127.0.0.1",
            "POSCAL_API_PORT": str(self.api_port),
            "POSCAL_TRACE_FILE": str(self.traces / f"{name}.jsonl"),
            "POSCAL_LOG_FORMAT": "json",
            "POSCAL_READY_FILE": str(self._ready_file(name)),
            "POSCAL_TOPIC_RAW": self.topics.raw,
            "POSCAL_TOPIC_CANONICAL": self.topics.canonical,
            "POSCAL_TOPIC_DEAD_LETTER": self.topics.dead_letter,
            **EMBEDDED_BROKER_CONSUMER_ENV,
            **self.extra_env,
        }
        with (self.logs / f"{name}.log").open("ab") as log:
            self._services[name] = subprocess.Popen(
                [sys.executable, "-m", f"services.{name}"],
                env=env,
                stdout=log,
                stderr=log,
                start_new_session=True,
                preexec_fn=dies_with_parent(signal.SIGTERM),
            )

    def _wait_until_ready(self, timeout: float = 30.0) -> None:
        """Until ingest and the API both answer /readyz with 200."""
        deadline = time.monotonic() + timeout
        waiting = {"ingest": self.ingest_url, "api": self.api_url}
        while time.monotonic() < deadline:
            self.check_alive()
            for name, url in list(waiting.items()):
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                        del waiting[name]
            if not waiting:
                return
            time.sleep(0.1)
        names = ", ".join(waiting)
        raise TimeoutError(f"{names} not ready within {timeout}s; see {self.logs}")

    def _ready_file(self, name: str) -> Path:
        return self.state_dir / "run" / f"{name}.ready"

    def _wait_for_consumers(self, timeout: float = 60.0) -> None:
        """Until each consumer has joined its group (before that, events would only queue) and
        the poller is polling."""
        deadline = time.monotonic() + timeout
        while not all(self._ready_file(name).exists() for name in READY_FILES):
            self.check_alive()
            if time.monotonic() > deadline:
                raise TimeoutError(f"consumers not ready within {timeout}s; see {self.logs}")
            time.sleep(0.05)

    def check_alive(self) -> None:
        for name, process in self._services.items():
            if process.poll() is not None:
                raise RuntimeError(
                    f"{name} exited with code {process.returncode}; see {self.logs / name}.log"
                )

    def stop(self) -> None:
        """SIGTERM to every service at once; each gets its shutdown grace to finish its batch
        and a little more to unwind once cancelled (lifecycle.run_until_signalled), and only one
        still running after that is killed."""
        for process in self._services.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.shutdown_grace_seconds() + STOP_MARGIN_SECONDS
        for process in self._services.values():
            try:
                process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self._services.clear()
        if self._broker is not None:
            self._broker.stop()
            self._broker = None
        if self._postgres is not None:
            self._postgres.stop()
            self._postgres = None


def _stored_api_jwt_secret(state_dir: Path) -> str:
    """The dev API's HS256 secret: from the environment, else kept in the state dir, so tokens
    minted for one run still verify after a restart."""
    from_env = os.environ.get(API_JWT_SECRET)
    if from_env:
        return from_env
    path = state_dir / "api-jwt.secret"
    if path.exists():
        return path.read_text().strip()
    secret = secrets.token_urlsafe(48)
    path.touch(mode=0o600)
    path.write_text(secret + "\n")
    return secret


def _stored_master_key(state_dir: Path) -> str:
    """The stack's key-encryption key: from the environment, else kept in the state dir."""
    from_env = os.environ.get("POSCAL_MASTER_KEY")
    if from_env:
        return from_env
    path = state_dir / "master.key"
    if path.exists():
        return path.read_text().strip()
    key = new_master_key_base64()
    path.touch(mode=0o600)
    path.write_text(key + "\n")
    return key
