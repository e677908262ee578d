"""What a poll adapter raises, and what the poller makes of it. No message ever holds a token:
callers redact before building one."""

from __future__ import annotations

from services.shared.errors import PermanentError, TransientError

# CredentialsRejected              stop polling until the credentials are replaced
#  └── CredentialsUnreadable       the stored credentials are not in this broker's form
# BrokerUnavailable (transient)    retry later, after `retry_after` if given
# PermanentError (shared)         the connection turns to error at once; retried with backoff
#  ├── BrokerRequestFailed         the broker refused the request itself (a 4xx other than
#  │                               401/403/429, or a Flex error code retrying cannot fix)
#  ├── UnexpectedResponse          the broker answered something the adapter cannot read
#  ├── AccountMismatch             the broker answered for another account than the connection's
#  └── PeriodGap                   the broker's answer starts after the cursor: what lies between
#                                  was never fetched (a Flex query period too short)


class CredentialsRejected(Exception):
    """The broker refused the credentials (401/403): stop until they are replaced."""

    def __init__(self, status_code: int, detail: str, error_code: str | None = None) -> None:
        super().__init__(f"the broker refused the credentials (HTTP {status_code}): {detail}")
        self.status_code = status_code
        # The broker's own code for why, when it gives one (IBKR Flex: 1012 token expired...).
        self.error_code = error_code


class BrokerUnavailable(TransientError):
    """The broker could not answer now (429, 5xx, network); retry after `retry_after` if given."""

    def __init__(self, detail: str, retry_after: float | None = None) -> None:
        super().__init__(detail)
        self.retry_after = retry_after


class CredentialsUnreadable(CredentialsRejected):
    """Rejected before any request: `status_code` is 0 because no broker answered."""

    def __init__(self, broker: str, expected: str) -> None:
        super().__init__(0, f"the stored {broker} credentials are not {expected}")
        self.broker = broker


class BrokerRequestFailed(PermanentError):
    """The broker answered that this request is wrong; sending it again cannot help."""

    def __init__(
        self,
        broker: str,
        target: str,
        detail: str,
        *,
        status_code: int | None = None,
        error_code: str | None = None,
    ) -> None:
        answer = f"HTTP {status_code}" if error_code is None else f"error {error_code}"
        super().__init__(f"{broker} refused {target} ({answer}): {detail}")
        self.broker = broker
        self.target = target
        self.status_code = status_code
        self.error_code = error_code


class UnexpectedResponse(PermanentError):
    """The broker's answer is not in the form the adapter (and its mapper) reads."""

    def __init__(self, broker: str, target: str, detail: str) -> None:
        super().__init__(f"{broker} answered {target} unexpectedly: {detail}")
        self.broker = broker
        self.target = target


class AccountMismatch(PermanentError):
    """Polling would file another account's trades under this connection."""

    def __init__(self, broker: str, expected: str, actual: str) -> None:
        super().__init__(
            f"{broker} returned account {actual!r}, but the connection is for {expected!r}"
        )
        self.broker = broker
        self.expected = expected
        self.actual = actual


class PeriodGap(PermanentError):
    """The answer covers a period that starts after the cursor: whatever happened in between
    was in no answer polled, and polling on would move the cursor past it for good."""

    def __init__(self, broker: str, starts: str, cursor: str, remedy: str) -> None:
        super().__init__(
            f"{broker} answered from {starts}, after the newest trade already synced "
            f"({cursor}): any trades in between would be lost; {remedy}"
        )
        self.broker = broker
        self.starts = starts
        self.cursor = cursor
