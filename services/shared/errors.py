"""The pipeline's error tree. Permanent means dead-letter and move on; transient means retry.

PipelineError
 ├── PermanentError          the input itself is wrong: retrying cannot help
 │    └── InvalidEvent       a message that cannot be mapped (goes to the dead-letter topic)
 └── TransientError          the world is briefly wrong (broker or database down): retry
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MessageOrigin:
    """Where a message came from, so every error can say which one failed."""

    topic: str
    partition: int
    offset: int


class PipelineError(Exception):
    """Base of every error the pipeline raises on purpose."""


class PermanentError(PipelineError):
    """Retrying the same input can never succeed."""


class InvalidEvent(PermanentError):
    """An event that cannot be mapped; `code` is a stable machine-readable reason."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail


class TransientError(PipelineError):
    """The same input may succeed later: back off and retry without committing."""
