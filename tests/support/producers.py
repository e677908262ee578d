"""A hand-written producer for specifications of what consumers send, with no broker."""

from __future__ import annotations

import asyncio
from typing import Any, Literal

from aiokafka.structs import RecordMetadata, TopicPartition


class FakeProducer:
    """Keeps every message sent, per topic. Deliveries of `send` are acknowledged at once, or
    fail at once, or are held for the test to settle from `held`. `refuse_after`: sends after
    that many are refused (a broker going away part-way through a batch)."""

    def __init__(
        self,
        *,
        deliveries: Literal["acknowledged", "failed", "held"] = "acknowledged",
        refuse_send: bool = False,
        refuse_after: int | None = None,
        send_error: Exception | None = None,
        delivery_error: Exception | None = None,
    ) -> None:
        self.sent: dict[str, list[bytes]] = {}
        self.held: list[asyncio.Future[RecordMetadata]] = []
        self._deliveries = deliveries
        self._refuse_send = refuse_send
        self._refuse_after = refuse_after
        self._accepted = 0
        self._send_error = send_error or ConnectionError("broker unreachable")
        self._delivery_error = delivery_error or TimeoutError()

    def deliver_from_now_on(self) -> None:
        """Acknowledge every later send (as a broker back after an outage)."""
        self._deliveries = "acknowledged"

    async def send(
        self, topic: str, value: bytes, key: bytes | None = None, headers: Any = None
    ) -> asyncio.Future[RecordMetadata]:
        if self._refuse_send or (
            self._refuse_after is not None and self._accepted >= self._refuse_after
        ):
            raise self._send_error
        self._accepted += 1
        delivery: asyncio.Future[RecordMetadata] = asyncio.get_running_loop().create_future()
        metadata = self._keep(topic, value)
        match self._deliveries:
            case "acknowledged":
                delivery.set_result(metadata)
            case "failed":
                delivery.set_exception(self._delivery_error)
            case "held":
                self.held.append(delivery)
        return delivery

    async def send_and_wait(
        self, topic: str, value: bytes, key: bytes | None = None, headers: Any = None
    ) -> RecordMetadata:
        return self._keep(topic, value)

    def _keep(self, topic: str, value: bytes) -> RecordMetadata:
        messages = self.sent.setdefault(topic, [])
        messages.append(value)
        return RecordMetadata(topic, 0, TopicPartition(topic, 0), len(messages) - 1, 0, 0, 0)
