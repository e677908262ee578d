"""The connection wizard's refusals, each saying what the person can do about it (its `detail`
is the broker's answer in words, never a credential); `refusal` maps a failed verification to
one.

    ApiError (errors.py)
     ├── WizardRefused              400: what was entered does not sign in
     │    ├── CredentialsRefused          wrong password or login, a token invalid or revoked
     │    ├── TokenExpired                a token past its expiry (IBKR Flex 1012)
     │    ├── UnknownServer               no such trading server (MT5)
     │    ├── AccountMismatched           the broker answered for another account
     │    └── NoAccounts                  signed in, but no account to connect
     ├── WizardConflict             409: the session or the account cannot be confirmed so
     │    ├── SessionNotReady             still verifying
     │    ├── SessionFailed               its verification failed
     │    ├── SessionConfirmed            already confirmed
     │    ├── UnknownAccount              not one the credentials reach
     │    ├── AccountTypeMismatch         a real account on a demo connection, or the reverse
     │    ├── AlreadyConnected            the account is connected already
     │    └── DemoSyncRequired            live before a demo connection of the broker synced
     ├── RateLimited (429)
     │    ├── BrokerRateLimited           the broker is limiting us: Retry-After from its answer
     │    └── ProvisioningBusy            the user's cloud terminals being provisioned, at most
     ├── BrokerUnreachable          502: the broker did not answer (in time)
     └── BrokerFailed               502: it answered what we cannot read
"""

from __future__ import annotations

import math

from services.api.errors import ApiError, RateLimited
from services.shared.brokers.discovery import VerificationFailed


class _Told(ApiError):
    def __init__(self, detail: str | None = None) -> None:
        super().__init__()
        if detail is not None:
            self.public_detail = detail


class WizardRefused(_Told):
    status_code = 400
    error = "credentials_rejected"
    public_detail = "the broker refused these credentials: check them and try again"


class CredentialsRefused(WizardRefused):
    pass


class TokenExpired(WizardRefused):
    error = "token_expired"
    public_detail = "the broker says this token has expired: make a new one"


class UnknownServer(WizardRefused):
    error = "unknown_server"
    public_detail = "there is no trading server of that name: enter it as the terminal shows it"


class AccountMismatched(WizardRefused):
    error = "account_mismatch"
    public_detail = "the broker answered for another account than the one entered"


class NoAccounts(WizardRefused):
    error = "no_accounts"
    public_detail = "these credentials sign in, but reach no account to connect"


class WizardConflict(_Told):
    status_code = 409
    error = "session_not_ready"
    public_detail = "the credentials are still being verified: follow the session"


class SessionNotReady(WizardConflict):
    pass


class SessionFailed(WizardConflict):
    error = "session_failed"
    public_detail = "this session's verification failed: start a new one"


class SessionConfirmed(WizardConflict):
    error = "already_confirmed"
    public_detail = "this session's connection was already made"


class UnknownAccount(WizardConflict):
    error = "unknown_account"
    public_detail = "that account is not one these credentials reach: pick one of the session's"


class AccountTypeMismatch(WizardConflict):
    error = "account_type_mismatch"
    public_detail = "a demo connection takes a demo account, a live connection a real one"


class AlreadyConnected(WizardConflict):
    error = "already_connected"
    public_detail = "this account is connected already"


class DemoSyncRequired(WizardConflict):
    error = "demo_sync_required"
    public_detail = (
        "a live connection is enabled only once a demo connection of the same broker has"
        " synced successfully: connect a demo account first"
    )


class BrokerRateLimited(RateLimited):
    error = "broker_rate_limited"
    public_detail = "the broker is limiting requests now; retry after the time in Retry-After"

    def __init__(self, retry_after_seconds: int, detail: str | None = None) -> None:
        super().__init__(retry_after_seconds)
        if detail is not None:
            self.public_detail = detail


class ProvisioningBusy(RateLimited):
    """Cloud terminals are billed and the service's rate limits shared: one user provisions a
    few at a time at most."""

    error = "provisioning_busy"
    public_detail = (
        "cloud terminals are still being provisioned for your other sessions: wait until they"
        " end, then try again"
    )


class BrokerUnreachable(_Told):
    status_code = 502
    error = "broker_unreachable"
    public_detail = "the broker could not be reached or did not answer: try again later"


class BrokerFailed(_Told):
    status_code = 502
    error = "broker_error"
    public_detail = "the broker answered in a way we could not read: try again later"


_REFUSED: dict[str, type[WizardRefused]] = {
    "token_expired": TokenExpired,
    "server_not_found": UnknownServer,
    "unknown_server": UnknownServer,
    "account_mismatch": AccountMismatched,
    "no_accounts": NoAccounts,
}
_CONFLICTS: dict[str, type[WizardConflict]] = {
    "session_not_ready": SessionNotReady,
    "session_failed": SessionFailed,
    "already_confirmed": SessionConfirmed,
    "unknown_account": UnknownAccount,
    "account_type_mismatch": AccountTypeMismatch,
    "already_connected": AlreadyConnected,
    "demo_sync_required": DemoSyncRequired,
}


def refusal(failed: VerificationFailed) -> ApiError:
    """The answer to a verification that failed, its message as the detail."""
    if failed.kind == "rate_limited":
        return BrokerRateLimited(math.ceil(failed.retry_after or 1), failed.message)
    if failed.kind == "unreachable":
        if failed.code == "broker_error":
            return BrokerFailed(failed.message)
        return BrokerUnreachable(failed.message)
    return _REFUSED.get(failed.code, CredentialsRefused)(failed.message)


def conflict(code: str, message: str) -> WizardConflict:
    """The answer to a session that cannot be confirmed as asked."""
    return _CONFLICTS.get(code, WizardConflict)(message)
