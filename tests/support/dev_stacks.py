"""The dev stack's real service processes for an end-to-end spec: on the session's Postgres and
broker, topics and consumer groups of their own, spans to the spec's OTLP receiver."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path

from services.devstack.stack import DevStack
from services.shared.settings import Topics


@contextlib.contextmanager
def running_stack(
    state_dir: Path,
    *,
    database_url: str,
    kafka_bootstrap: str,
    master_key: str,
    otlp_endpoint: str,
    extra_env: Mapping[str, str] | None = None,
) -> Iterator[DevStack]:
    """Started, then stopped on the way out; ingest and the API on free ports."""
    suffix = uuid.uuid4().hex[:8]
    stack = DevStack(
        state_dir=state_dir,
        port=0,
        api_port=0,  # not the default 8090: another stack on this machine may hold it
        database_url=database_url,
        kafka_bootstrap_servers=kafka_bootstrap,
        master_key=master_key,
        topics=Topics(
            raw=f"e2e.{suffix}.raw",
            canonical=f"e2e.{suffix}.canonical",
            dead_letter=f"e2e.{suffix}.deadletter",
        ),
        extra_env={
            "OTEL_EXPORTER_OTLP_ENDPOINT": otlp_endpoint,
            "POSCAL_NORMALIZER_GROUP": f"e2e-normalizer-{suffix}",
            "POSCAL_WRITER_GROUP": f"e2e-writer-{suffix}",
            **(extra_env or {}),
        },
    )
    stack.start()
    try:
        yield stack
    finally:
        stack.stop()
