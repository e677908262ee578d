"""An OTLP receiver that also keeps each export request whole (span attributes, events, resource
attributes), for tests that search what the services exported."""

from __future__ import annotations

from tests.support.otlp import OtlpReceiver


class RecordingOtlpReceiver(OtlpReceiver):
    def __init__(self) -> None:
        super().__init__()
        self.payloads: list[bytes] = []  # serialized ExportTraceServiceRequest bodies

    def _collect(self, body: bytes) -> None:
        self.payloads.append(body)
        super()._collect(body)
