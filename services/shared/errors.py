"""The pipeline's error tree: permanent means the input is wrong, transient means retry later."""

from __future__ import annotations


class PipelineError(Exception):
    """Base of every error the pipeline raises on purpose. The tree, with the subclasses that
    live beside the code raising them:

    PipelineError
     ├── PermanentError                 the input itself is wrong: retrying it cannot help
     │    ├── InvalidEvent              an event (or one of its items) that cannot be mapped:
     │    │                             dead-lettered (or rejected alone), and the rest goes on
     │    ├── EventRefused              writer: an event whose write fails for what it holds
     │    ├── DeadLetterBudgetExceeded  dead_letters: too many in a row to be bad input: stop
     │    └── BrokerRequestFailed, ...  brokers/errors.py: the connection's error at once
     ├── TransientError                 the world is briefly wrong (broker or database down):
     │    │                             back off and retry without committing
     │    └── BrokerUnavailable         brokers/errors.py: retry after `retry_after` if given
     └── StopWriting                    writer: every write would fail until someone acts: exit
    """


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
