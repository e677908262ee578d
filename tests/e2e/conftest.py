"""The dev stack's real service processes, on the session's Postgres and broker."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from services.devstack.stack import DevStack
from tests.support.dev_stacks import running_stack
from tests.support.kafka import wait_until_consumed
from tests.support.otlp import OtlpReceiver


@pytest.fixture(scope="module")
def otlp() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as receiver:
        yield receiver


@pytest.fixture(scope="module")
def stack_env() -> dict[str, str]:
    """The services' environment beyond the stack's own; a module overrides it for settings
    of its own. A stack stopped at the end of its module gives its services 2 s to finish:
    its poller may be waiting out another module's broker, long gone, in a retry's delay."""
    return {"OTEL_BSP_SCHEDULE_DELAY": "200", "POSCAL_SHUTDOWN_GRACE_SECONDS": "2"}


@pytest.fixture(scope="module")
def stack(
    otlp: OtlpReceiver,
    tmp_path_factory: pytest.TempPathFactory,
    database_url: str,
    kafka_bootstrap: str,
    master_key: str,
    stack_env: dict[str, str],
) -> Iterator[DevStack]:
    with running_stack(
        Path(tmp_path_factory.mktemp("stack")),
        database_url=database_url,
        kafka_bootstrap=kafka_bootstrap,
        master_key=master_key,
        otlp_endpoint=otlp.endpoint,
        extra_env=stack_env,
    ) as stack:
        yield stack


@pytest.fixture
def caught_up(stack: DevStack, kafka_bootstrap: str) -> Callable[[], Awaitable[None]]:
    """Waits until the stack has been through everything on its topics so far: the normalizer
    has committed all of the raw topic, then the writer all of the canonical one."""

    async def wait() -> None:
        await wait_until_consumed(
            kafka_bootstrap,
            (stack.extra_env["POSCAL_NORMALIZER_GROUP"], stack.topics.raw),
            (stack.extra_env["POSCAL_WRITER_GROUP"], stack.topics.canonical),
        )

    return wait
