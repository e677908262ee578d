"""Session-wide real infrastructure: one Postgres (migrated) and one broker for the whole run.

Tests isolate themselves by data, not by servers: each creates its own user and connection, and
tests that consume use topics and consumer groups of their own.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import hypothesis
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from services.devstack.stack import pipeline_topics
from services.shared.crypto import LocalKeyEncryptionKey, new_master_key_base64
from services.shared.database import create_pool
from services.shared.kafka import ensure_topics
from services.shared.migrations import apply_migrations
from services.shared.settings import Topics
from services.shared.vault import CredentialVault
from tests.support.infrastructure import running_kafka, running_postgres

# Property tests draw the same examples on every run, so the suite's verdict never depends on
# luck; `HYPOTHESIS_PROFILE=explore` draws new ones (and prints how to reproduce a failure).
hypothesis.settings.register_profile("deterministic", derandomize=True, database=None)
hypothesis.settings.register_profile("explore", derandomize=False, print_blob=True)
hypothesis.settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "deterministic"))

# Every service a test starts (a dev stack too, whose own default records a share) records every
# trace: specs follow one event's trace across the services.
os.environ["OTEL_TRACES_SAMPLER"] = "parentbased_always_on"

# Ports the suite picks for the servers it starts come from a range of this worker's own
# (pytest-xdist runs several at once), below the kernel's ephemeral ports.
_WORKER = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw"))
os.environ["POSCAL_FREE_PORT_RANGE"] = f"{12000 + 2000 * _WORKER}-{12000 + 2000 * _WORKER + 1999}"

# The marker every test under these folders carries, so that `-m` selects exactly them.
MARKER_OF_FOLDER = {"integration": "integration", "e2e": "e2e"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    tests = Path(__file__).parent
    unmarked = [
        item.nodeid
        for item in items
        if tests in item.path.parents
        and (marker := MARKER_OF_FOLDER.get(item.path.relative_to(tests).parts[0]))
        and item.get_closest_marker(marker) is None
    ]
    if unmarked:
        raise pytest.UsageError(
            "tests without the marker of their folder (add pytestmark = pytest.mark.<folder>): "
            + ", ".join(unmarked)
        )


@pytest.fixture(scope="session", autouse=True)
def spans() -> InMemorySpanExporter:
    """Every span the in-process code under test ends, as the real SDK records it."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    return exporter


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    with running_postgres() as dsn:
        asyncio.run(apply_migrations(dsn))
        yield dsn


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    with running_kafka() as bootstrap:
        yield bootstrap


@pytest.fixture(scope="session")
def master_key() -> str:
    return new_master_key_base64()


@pytest.fixture(scope="session")
def vault(master_key: str) -> CredentialVault:
    return CredentialVault(LocalKeyEncryptionKey.from_base64(master_key))


@pytest.fixture(scope="session")
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(database_url, max_size=10)
    yield pool
    await pool.close()


@pytest.fixture
async def topics(kafka_bootstrap: str) -> Topics:
    """Topics of this test's own, so consumers see only what the test produced."""
    suffix = uuid.uuid4().hex[:8]
    own = Topics(
        raw=f"test.{suffix}.raw",
        canonical=f"test.{suffix}.canonical",
        dead_letter=f"test.{suffix}.deadletter",
    )
    await ensure_topics(kafka_bootstrap, pipeline_topics(own, partitions=3))
    return own
