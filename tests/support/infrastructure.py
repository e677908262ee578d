"""Real Postgres and a real Kafka-protocol broker for tests.

Where a Docker engine answers, testcontainers runs the real images (postgres, apache/kafka);
elsewhere the same servers run as local processes (Debian's Postgres, the pinned tansu broker).
Either way, whatever is started is stopped when the context exits.
"""

from __future__ import annotations

import contextlib
import functools
import os
import warnings
from collections.abc import Iterator
from pathlib import Path


@functools.cache
def docker_available() -> bool:
    """A Docker engine answers here (and POSCAL_TEST_NO_DOCKER does not say to ignore it)."""
    if os.environ.get("POSCAL_TEST_NO_DOCKER"):
        return False
    if not os.environ.get("DOCKER_HOST") and not Path("/var/run/docker.sock").exists():
        return False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        try:
            import docker  # type: ignore[import-untyped]

            client = docker.from_env(timeout=2)
            try:
                client.ping()
            finally:
                client.close()
        except Exception:
            return False
    return True


@contextlib.contextmanager
def running_postgres() -> Iterator[str]:
    """A DSN of an empty database, valid until the context exits."""
    if docker_available():
        from testcontainers.postgres import PostgresContainer

        with PostgresContainer("postgres:15-alpine", driver=None) as container:
            yield container.get_connection_url()
        return
    from services.devstack.postgres import EmbeddedPostgres

    with EmbeddedPostgres(database="poscal_test") as postgres:
        yield postgres.dsn


@contextlib.contextmanager
def running_kafka() -> Iterator[str]:
    """Bootstrap servers of a running broker, valid until the context exits."""
    if docker_available():
        from testcontainers.kafka import KafkaContainer

        with KafkaContainer("apache/kafka:3.9.1").with_kraft() as container:
            yield container.get_bootstrap_server()
        return
    from services.devstack.broker import EmbeddedBroker

    with EmbeddedBroker() as broker:
        yield broker.bootstrap_servers
